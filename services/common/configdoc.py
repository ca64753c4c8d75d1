"""Prints the configuration reference (markdown) from the settings classes.

    python -m services.common.configdoc

The README's reference is this output; a test keeps the two in agreement.
"""

import importlib
import json

from services.common.config import ServerSettings, Settings

# section -> "module:Class" of its settings.
SECTIONS = {
    "router": "services.router.config:RouterSettings",
}


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    return json.dumps(value, default=str) if not isinstance(value, str) else (f'"{value}"' if value else '""')


def _rows(cls: type[Settings], env_prefix: str, skip: set[str]) -> list[str]:
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for field_name, field in cls.model_fields.items():
        if field_name in skip:
            continue
        env = f"`{env_prefix}{field_name.upper()}`"
        if field_name in cls.ENV_ALIASES:
            env += f" or `{cls.ENV_ALIASES[field_name]}`"
        default = _default(field).replace("|", "\\|")
        if len(default) > 60:
            default = "(see docs)"
        rows.append(f"| `{field_name}` | {env} | `{default}` | {(field.description or '').replace('|', '/')} |")
    return rows


def reference() -> str:
    lines = ["### Every service", "", "Each gRPC service has these, in its own section.", "",
             *_rows(ServerSettings, "LLMSUITE_<SECTION>_", set()), ""]
    common = set(ServerSettings.model_fields)
    for section, target in SECTIONS.items():
        module, _, name = target.partition(":")
        cls: type[Settings] = getattr(importlib.import_module(module), name)
        skip = common if issubclass(cls, ServerSettings) else set()
        lines += [f"### `{section}`", "", *_rows(cls, f"LLMSUITE_{section.upper()}_", skip), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference())
