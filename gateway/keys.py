"""API keys: format, hashing, the keys file, and a small command-line tool.

A key looks like `lsk_<id>_<secret>`: `id` names the key in logs, headers and
rate limits (it is not secret); `secret` is 32 random bytes, base64url. The keys
file holds only the SHA-256 of the whole key. A fast hash is enough here because
the secret has 256 bits of entropy: unlike a password, it cannot be guessed from
a leaked hash, and a slow hash (scrypt, bcrypt) would cost milliseconds on every
request for no gain. Comparison is constant-time.

The keys file (YAML) is the source of truth that every authz replica reloads when
it changes; see docs/gateway.md for the format and for revocation.

    python -m gateway.keys new --id ci --tenant acme --scopes inference,retrieval:read --file keys.yaml
    python -m gateway.keys revoke --id ci --file keys.yaml [--redis-url redis://...]
    python -m gateway.keys hash            # reads a key on stdin, prints its hash
"""

import argparse
import hashlib
import hmac
import os
import re
import secrets
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PREFIX = "lsk"
KEY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SCOPE_PATTERN = r"^[a-z][a-z0-9-]*(:[a-z][a-z0-9-]*)?$"
_KEY_RE = re.compile(r"^lsk_([a-z0-9][a-z0-9-]{0,62})_([A-Za-z0-9_-]{32,128})$")

# Scopes the suite's default rules use; `admin` satisfies every scope.
KNOWN_SCOPES = ("inference", "retrieval:read", "retrieval:write", "guardrails", "admin")
ADMIN_SCOPE = "admin"


class KeysFileError(Exception):
    """The keys file cannot be read or is invalid; the message says where."""


class ApiKey(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=KEY_ID_PATTERN, description="Key id, the `<id>` part of the key; unique.")
    tenant: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                        description="Tenant the key acts for.")
    scopes: tuple[str, ...] = Field(description="Scopes granted, e.g. inference, retrieval:write, admin.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the whole key.")
    revoked: bool = Field(False, description="True: the key is rejected (within a second on every replica).")
    expires: datetime | None = Field(None, description="Optional expiry (ISO 8601, UTC if no offset).")
    description: str = Field("", description="Free text for operators: owner, purpose.")

    @field_validator("scopes")
    @classmethod
    def _scopes_valid(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        for scope in scopes:
            if not re.match(SCOPE_PATTERN, scope):
                raise ValueError(f"scope {scope!r} is not of the form name or name:action")
        return scopes

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


class KeysFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: tuple[ApiKey, ...] = ()

    @field_validator("keys")
    @classmethod
    def _unique(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        seen: set[str] = set()
        for key in keys:
            if key.id in seen:
                raise ValueError(f"key id {key.id!r} appears twice")
            seen.add(key.id)
        return keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key(key_id: str) -> str:
    if not re.match(KEY_ID_PATTERN, key_id):
        raise ValueError(f"key id {key_id!r} must match {KEY_ID_PATTERN}")
    return f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, None for anything else."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def matches(key: str, entry: ApiKey) -> bool:
    return hmac.compare_digest(hash_key(key), entry.sha256)


def parse_keys(text: str, origin: str) -> dict[str, ApiKey]:
    """Parses keys-file YAML into {key id: entry}; raises KeysFileError naming `origin`."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise KeysFileError(f"{origin}: not valid YAML ({err})") from None
    try:
        parsed = KeysFile.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise KeysFileError(f"{origin}: {problems}") from None
    return {key.id: key for key in parsed.keys}


def load_keys(path: str | Path) -> dict[str, ApiKey]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise KeysFileError(f"{path}: cannot read ({err.strerror})") from None
    return parse_keys(text, str(path))


def _entry_dict(entry: ApiKey) -> dict:
    data = entry.model_dump(mode="json", exclude_defaults=True)
    data["scopes"] = list(entry.scopes)
    return data


def write_keys(path: str | Path, keys: dict[str, ApiKey]) -> None:
    """Writes the keys file atomically (temp file + rename), so a reloading
    replica never reads half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"keys": [_entry_dict(k) for k in keys.values()]}, sort_keys=False)
    header = "# llmsuite API keys: SHA-256 hashes only. Manage with `python -m gateway.keys`.\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(header + body)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def add_key(path: str | Path, key_id: str, tenant: str, scopes: list[str], description: str = "") -> str:
    """Creates a key, appends its hash to the keys file (created if absent); returns the key."""
    path = Path(path)
    keys = load_keys(path) if path.exists() else {}
    if key_id in keys:
        raise KeysFileError(f"{path}: key id {key_id!r} already exists; pick another or revoke it first")
    key = generate_key(key_id)
    keys[key_id] = ApiKey(id=key_id, tenant=tenant, scopes=tuple(scopes), sha256=hash_key(key),
                          description=description)
    write_keys(path, keys)
    return key


def revoke_key(path: str | Path, key_id: str) -> None:
    keys = load_keys(path)
    if key_id not in keys:
        raise KeysFileError(f"{path}: no key with id {key_id!r}")
    keys[key_id] = keys[key_id].model_copy(update={"revoked": True})
    write_keys(path, keys)


DEV_KEY_ID = "dev"
DEV_SCOPES = ("inference", "retrieval:read", "retrieval:write", "guardrails")


def ensure_dev_key(keys_file: str | Path, key_file: str | Path, tenant: str = "default") -> str:
    """The local development stack's key: created on first use, then reused.

    Unlike real keys, this one is also kept in plain text (`key_file`, mode 0600,
    under the git-ignored var/ folder) so that `make run` can print it at every start
    and the CLI can pick it up. If the keys file no longer accepts it (edited,
    revoked), a new one replaces it.
    """
    keys_file, key_file = Path(keys_file), Path(key_file)
    keys = load_keys(keys_file) if keys_file.exists() else {}
    if key_file.exists():
        key = key_file.read_text(encoding="utf-8").strip()
        entry = keys.get(DEV_KEY_ID)
        if entry is not None and not entry.revoked and matches(key, entry):
            return key
    key = generate_key(DEV_KEY_ID)
    keys[DEV_KEY_ID] = ApiKey(id=DEV_KEY_ID, tenant=tenant, scopes=DEV_SCOPES, sha256=hash_key(key),
                              description="local development stack (make run)")
    write_keys(keys_file, keys)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys", description="Manage llmsuite API keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="create a key, store its hash, print the key once")
    new.add_argument("--id", required=True)
    new.add_argument("--tenant", required=True)
    new.add_argument("--scopes", required=True, help="comma-separated, e.g. inference,retrieval:read")
    new.add_argument("--description", default="")
    new.add_argument("--file", required=True, help="keys file to update")
    revoke = sub.add_parser("revoke", help="revoke a key in the file and, with --redis-url, in Redis")
    revoke.add_argument("--id", required=True)
    revoke.add_argument("--file")
    revoke.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    revoke.add_argument("--redis-set", default="llmsuite:revoked-keys")
    sub.add_parser("hash", help="read a key on stdin, print its sha256")
    args = parser.parse_args(argv)
    try:
        if args.command == "new":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            print(add_key(args.file, args.id, args.tenant, scopes, args.description))
        elif args.command == "revoke":
            if not args.file and not args.redis_url:
                parser.error("revoke needs --file, --redis-url (or REDIS_URL), or both")
            if args.file:
                revoke_key(args.file, args.id)
            if args.redis_url:
                import redis

                redis.Redis.from_url(args.redis_url).sadd(args.redis_set, args.id)
            print(f"revoked {args.id}")
        else:
            print(hash_key(sys.stdin.readline().strip()))
    except (KeysFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
