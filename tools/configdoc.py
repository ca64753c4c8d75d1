"""Prints the configuration reference (markdown) from the settings classes.

    python -m tools.configdoc            # print it
    python -m tools.configdoc --readme   # rewrite README.md's block

The README's reference is this output; a test keeps the two in agreement.
"""

import argparse
import importlib
import json
import re
from pathlib import Path

from services.common.config import ServerSettings, Settings, env_aliases
from services.common.paths import REPO


# section -> "module:Class" of its settings.
SECTIONS = {
    "router": "services.router.config:RouterSettings",
    "worker": "services.worker.config:WorkerSettings",
    "generation": "services.generation.config:GenerationSettings",
    "triton": "services.triton.config:TritonSettings",
    "guardrails": "services.guardrails.config:GuardrailsSettings",
    "retrieval": "services.retrieval.config:RetrievalSettings",
    "authz": "gateway.authz.config:AuthzSettings",
    "ratelimit": "gateway.ratelimit.config:RateLimitSettings",
    "openai": "services.openai.config:OpenAISettings",
    # Read by every process, and by the stack for Envoy's and Triton's flags.
    "tracing": "services.common.tracing:TracingSettings",
}


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, (str, Path)) and Path(value).is_absolute() and Path(value).is_relative_to(REPO):
        # Paths inside the checkout are shown relative to it, as users write them.
        value = str(Path(value).relative_to(REPO))
    return json.dumps(value, default=str) if not isinstance(value, str) else (f'"{value}"' if value else '""')


def _rows(cls: type[Settings], env_prefix: str, skip: set[str]) -> list[str]:
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for field_name, field in cls.model_fields.items():
        if field_name in skip:
            continue
        env = f"`{env_prefix}{field_name.upper()}`"
        aliases = env_aliases(cls)
        if field_name in aliases:
            env += f" or `{aliases[field_name]}`"
        default = _default(field).replace("|", "\\|")
        if len(default) > 60:
            default = "(see docs)"
        rows.append(f"| `{field_name}` | {env} | `{default}` | {(field.description or '').replace('|', '/')} |")
    return rows


def reference() -> str:
    lines = ["### Every service", "", "Each service has these, in its own section (the OpenAI API, `openai`, serves HTTP on `port`).", "",
             *_rows(ServerSettings, "LLMSUITE_<SECTION>_", set()), ""]
    common = set(ServerSettings.model_fields)
    for section, target in SECTIONS.items():
        module, _, name = target.partition(":")
        cls: type[Settings] = getattr(importlib.import_module(module), name)
        skip = common if issubclass(cls, ServerSettings) else set()
        lines += [f"### `{section}`", "", *_rows(cls, f"LLMSUITE_{section.upper()}_", skip), ""]
    return "\n".join(lines)


README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- config-reference:start -->\n).*?(<!-- config-reference:end -->)", re.S)


def main() -> None:
    parser = argparse.ArgumentParser(description="Configuration reference from the settings classes.")
    parser.add_argument("--readme", action="store_true", help="rewrite the reference block in README.md")
    args = parser.parse_args()
    if not args.readme:
        print(reference())
        return
    text = README.read_text()
    if not BLOCK.search(text):
        raise SystemExit("README.md has no config-reference block")
    README.write_text(BLOCK.sub(lambda m: m.group(1) + reference().strip() + "\n" + m.group(2), text))


if __name__ == "__main__":
    main()
