"""One validated, frozen settings object per service, read once at start.

Sources, later ones winning:
  1. defaults declared on the settings class (each documented next to its field);
  2. the section named after the service in the YAML file at $LLMSUITE_CONFIG;
  3. environment variables LLMSUITE_<SECTION>_<FIELD> (scalar fields), and the
     well-known names in ENV_ALIASES (REDIS_URL, QDRANT_URL, ...).
Bad settings stop the service at start with a message naming the setting and source.
"""

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_ENV = "LLMSUITE_CONFIG"


class ConfigError(Exception):
    """Settings are missing or invalid; the message says which and where from."""


class Settings(BaseModel):
    """Base for service settings: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Field name -> extra environment variable read for it (lower precedence than
    # the LLMSUITE_<SECTION>_<FIELD> name).
    ENV_ALIASES: ClassVar[dict[str, str]] = {}


class ServerSettings(Settings):
    """Settings every gRPC service has."""

    # One certificate per workload (container), whatever service runs in it.
    ENV_ALIASES: ClassVar[dict[str, str]] = {
        "tls_cert_file": "LLMSUITE_TLS_CERT_FILE", "tls_key_file": "LLMSUITE_TLS_KEY_FILE",
        "tls_ca_file": "LLMSUITE_TLS_CA_FILE"}

    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus /metrics endpoint.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0 picks a free one.")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$", description="Log level.")
    grace_seconds: float = Field(10.0, ge=0, le=300, description="On SIGTERM, time in-flight calls get to finish.")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent.")
    default_tenant: str = Field(
        "default", min_length=1,
        description="Tenant used when no gateway identity header is present (direct calls in development).",
    )
    tls_cert_file: str = Field(
        "", description="Mutual TLS: this workload's certificate (PEM), served to callers and presented to "
                        "upstreams. Empty: plaintext (loopback development).")
    tls_key_file: str = Field("", description="Mutual TLS: the certificate's private key (PEM).")
    tls_ca_file: str = Field(
        "", description="Mutual TLS: the suite's CA (PEM); callers without a certificate it signed are refused, "
                        "and upstreams are checked against it.")
    tls_allowed_clients: tuple[str, ...] = Field(
        (), description="Mutual TLS: common names of the certificates allowed to call this service (e.g. envoy); "
                        "empty: any the CA signed.")

    @model_validator(mode="after")
    def _tls_complete(self) -> "ServerSettings":
        files = {"tls_cert_file": self.tls_cert_file, "tls_key_file": self.tls_key_file,
                 "tls_ca_file": self.tls_ca_file}
        given = [name for name, path in files.items() if path]
        if given and len(given) != len(files):
            missing = sorted(set(files) - set(given))
            raise ValueError(f"mutual TLS needs tls_cert_file, tls_key_file and tls_ca_file; missing {missing}")
        for name in given:
            if not Path(files[name]).is_file():
                raise ValueError(f"{name}: {files[name]} is not a file")
        if self.tls_allowed_clients and not given:
            raise ValueError("tls_allowed_clients needs mutual TLS (tls_cert_file, tls_key_file, tls_ca_file)")
        return self


S = TypeVar("S", bound=Settings)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{CONFIG_ENV}={path}: file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{CONFIG_ENV}={path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_ENV}={path}: top level must be a mapping of service sections")
    return data


def env_aliases(cls: type[Settings]) -> dict[str, str]:
    """ENV_ALIASES of `cls` and of the classes it extends."""
    aliases: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        aliases.update(vars(klass).get("ENV_ALIASES", {}))
    return aliases


def load(cls: type[S], section: str, *, environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> S:
    """Builds `cls` from defaults, the YAML section, environment and explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if env.get(CONFIG_ENV):
        data = _read_yaml(env[CONFIG_ENV])
        part = data.get(section) or {}
        if not isinstance(part, dict):
            raise ConfigError(f"{env[CONFIG_ENV]}: section '{section}' must be a mapping")
        values.update(part)
        sources.update({key: f"{env[CONFIG_ENV]} [{section}]" for key in part})
    aliases = env_aliases(cls)
    for name in cls.model_fields:
        names = [f"LLMSUITE_{section.upper()}_{name.upper()}"]
        if name in aliases:
            names.append(aliases[name])
        for env_name in names:
            if env_name in env:
                values[name] = env[env_name]
                sources[name] = f"${env_name}"
                break
    values.update(overrides or {})
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            if not item["loc"]:  # a rule across settings
                problems.append(f"{section}: {item['msg']}")
                continue
            field = ".".join(str(part) for part in item["loc"])
            origin = sources.get(str(item["loc"][0]), "default")
            problems.append(f"{section}.{field}: {item['msg']} (from {origin})")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
