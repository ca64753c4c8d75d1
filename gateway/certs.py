"""Certificates for mutual TLS between the suite's processes (compose makes them at
setup; see docs/gateway.md, "Service-to-service trust").

    python -m gateway.certs --out DIR --names envoy,router,guardrails,...

writes DIR/<name>/{cert.pem,key.pem,ca.pem} for each name: a key pair and a
certificate for that workload, signed by a fresh certificate authority whose
certificate is ca.pem. The CA's own private key is never written: nobody can issue
another certificate the suite trusts, so adding a workload means running this again
for all of them. Each certificate names its workload in the common name (which the
services check against `tls_allowed_clients`) and as its DNS name (the host name
its callers use), is valid for 127.0.0.1 too (a container's own health check), and
serves as both server and client certificate. Keys are EC P-256; certificates last `--days` (default 825).
"""

import argparse
import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "llmsuite"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)


def issue(out: Path, names: list[str], days: int = 825) -> None:
    """A new CA, and a certificate and key for each name under out/<name>/."""
    for name in names:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"workload name {name!r} must match {NAME_PATTERN.pattern}")
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("llmsuite service CA")).issuer_name(_name("llmsuite service CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(not_before).not_valid_after(not_after)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(_name(name)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(LOOPBACK)]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "ca.pem", ca_pem, 0o644)
        _write(folder / "cert.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        # Readable by the owner and the group (compose gives Envoy, uid 101, the
        # services' group), never by others.
        _write(folder / "key.pem", _pem_key(key), 0o640)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--names", required=True, help="comma-separated workload names, e.g. envoy,router")
    parser.add_argument("--days", type=int, default=825)
    args = parser.parse_args()
    names = [name.strip() for name in args.names.split(",") if name.strip()]
    issue(args.out, names, args.days)
    print(f"issued certificates for {', '.join(names)} under {args.out}")


if __name__ == "__main__":
    main()
