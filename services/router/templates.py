"""Prompt templates as versioned objects: which version of each template requests use.

The configured templates (`templates:`) are each template's first version, active
at the start. Operators add versions (CreateTemplateVersion: immutable once
created), activate one (ActivateTemplate) or go back to the one active before
(RollbackTemplate). Those changes are documents in the shared state
(shared_state.py), re-read by every replica within a second, like the rollouts.

A request takes its tenant's template in the version active when it arrived: the
version and a digest of its text go into the cache key (cache.template_id), so an
answer made with one version is never served for another, and the response
reports the version.
"""

import re
from dataclasses import dataclass, field
from typing import Mapping

from services.audit.log import utc_now
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.router.config import PromptTemplate, RouterSettings
from services.router.shared_state import SharedState

KIND = "template"
VERSION_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
MAX_SYSTEM_CHARS = 16_000
# Earlier active versions kept for RollbackTemplate.
MAX_HISTORY = 20


@dataclass(frozen=True)
class Version:
    template: PromptTemplate
    # "config" or "admin".
    source: str
    created_at: str = ""


@dataclass(frozen=True)
class Template:
    """One template with its versions, as this replica serves it."""

    name: str
    active: str
    # Version -> Version, the configured one first.
    versions: dict[str, Version]
    # Versions active before, the most recent last.
    history: tuple[str, ...] = ()
    revision: int = 0
    updated_at: str = ""
    updated_by: str = "config"
    created: dict[str, dict] = field(default_factory=dict)

    def to_doc(self) -> dict:
        return {"name": self.name, "active": self.active, "history": list(self.history),
                "versions": self.created, "revision": self.revision, "updated_at": self.updated_at,
                "updated_by": self.updated_by}


def _from_doc(configured: PromptTemplate, name: str, doc: Mapping | None) -> Template:
    versions = {configured.version: Version(configured, "config")}
    if doc is None:
        return Template(name=name, active=configured.version, versions=versions)
    created = dict(doc.get("versions", {}))
    for version, entry in created.items():
        versions.setdefault(version, Version(PromptTemplate(version=version, system=entry["system"]), "admin",
                                             entry.get("created_at", "")))
    active = doc["active"] if doc.get("active") in versions else configured.version
    return Template(name=name, active=active, versions=versions, history=tuple(doc.get("history", ())),
                    revision=int(doc.get("revision", 0)), updated_at=doc.get("updated_at", ""),
                    updated_by=doc.get("updated_by", ""), created=created)


def _changed(template: Template, actor: str, **fields) -> dict:
    doc = template.to_doc()
    doc.update(fields, revision=template.revision + 1, updated_at=utc_now(), updated_by=actor)
    return doc


class Templates:
    def __init__(self, settings: RouterSettings, state: SharedState):
        self._configured = dict(settings.templates)
        self._state = state
        self._current: dict[str, Template] = {}
        self.apply({})

    def apply(self, documents: dict[str, dict]) -> None:
        """Takes the shared state's documents (templates without one keep their configured version)."""
        self._current = {name: _from_doc(configured, name, documents.get(name))
                         for name, configured in self._configured.items()}

    def active(self, name: str) -> PromptTemplate:
        """The version of template `name` new requests use."""
        template = self._current[name]
        return template.versions[template.active].template

    def all(self) -> list[Template]:
        return [self._current[name] for name in sorted(self._current)]

    def get(self, name: str) -> Template:
        template = self._current.get(name)
        if template is None:
            raise NotFound(f"no template {name[:64]!r}; templates: {', '.join(sorted(self._current))}",
                           reason="UNKNOWN_TEMPLATE")
        return template

    def version(self, name: str, version: str) -> Version:
        template = self.get(name)
        found = template.versions.get(version or template.active)
        if found is None:
            raise NotFound(f"template {name!r} has no version {version[:32]!r}; versions: "
                           f"{', '.join(template.versions)}", reason="UNKNOWN_TEMPLATE_VERSION")
        return found

    async def _change(self, name: str, change) -> Template:
        self.get(name)
        configured = self._configured[name]

        def on_doc(doc: dict | None) -> dict:
            return change(_from_doc(configured, name, doc))

        template = _from_doc(configured, name, await self._state.update(KIND, name, on_doc))
        self._current[name] = template
        return template

    async def create_version(self, name: str, version: str, system: str, actor: str) -> Version:
        if not VERSION_PATTERN.fullmatch(version):
            raise InvalidArgument("version must be 1 to 32 letters, digits, '.', '_' or '-'", field="version")
        if not system.strip() or len(system) > MAX_SYSTEM_CHARS:
            raise InvalidArgument(f"system must be 1 to {MAX_SYSTEM_CHARS} characters", field="system")

        def change(template: Template) -> dict:
            if version in template.versions:
                raise AlreadyExists(f"template {name!r} already has version {version!r}; versions are immutable, "
                                    "create another", reason="TEMPLATE_VERSION_EXISTS")
            created = {**template.created, version: {"system": system, "created_at": utc_now(), "created_by": actor}}
            return _changed(template, actor, versions=created)

        return (await self._change(name, change)).versions[version]

    async def activate(self, name: str, version: str, actor: str) -> Template:
        if not version:
            raise InvalidArgument("version is required", field="version")
        self.version(name, version)

        def change(template: Template) -> dict:
            if version not in template.versions:
                raise NotFound(f"template {name!r} has no version {version[:32]!r}",
                               reason="UNKNOWN_TEMPLATE_VERSION")
            if version == template.active:
                return template.to_doc()
            history = [*template.history, template.active][-MAX_HISTORY:]
            return _changed(template, actor, active=version, history=history)

        return await self._change(name, change)

    async def rollback(self, name: str, actor: str) -> Template:
        def change(template: Template) -> dict:
            if not template.history:
                raise FailedPrecondition(f"template {name!r} has no earlier active version to return to",
                                         reason="NO_PREVIOUS_VERSION")
            *history, previous = template.history
            return _changed(template, actor, active=previous, history=history)

        return await self._change(name, change)
