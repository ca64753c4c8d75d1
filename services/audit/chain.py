"""The audit log's hash chain: how records are sealed, and how a chain is verified.

A record is one JSON object a line. Sealing adds `seq` (1, 2, ... over the whole
chain, across files), `prev` (the previous record's hash, GENESIS for the first)
and `hash`, the sha256 of the record's canonical JSON (sorted keys, no spaces)
without `hash`. A changed record then fails its own hash, and a deleted, inserted
or reordered record breaks the `prev` link of the record after it. Files are
rotated by size and the first record of a new file carries the last hash of the
previous one, so the chain runs across files.

What the chain alone cannot show: records cut from the very end of the newest
file, since nothing follows them. The writer logs the chain's head (seq and hash)
whenever it closes a file, so a copy of the service log anchors the end.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

GENESIS = "0" * 64

# A record the writer adds when its queue was full and it had to drop records.
DROPPED_KIND = "dropped"


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def digest(record: dict) -> str:
    """The hash of a record: sha256 over its canonical JSON without the `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def seal(entry: dict, seq: int, prev: str) -> dict:
    """`entry` as the chain's record number `seq`, linked to the record hashed `prev`."""
    record = {**entry, "seq": seq, "prev": prev}
    record["hash"] = digest(record)
    return record


@dataclass(frozen=True)
class Problem:
    """The first record that breaks the chain."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Verification:
    records: int
    files: int
    first_seq: int
    last_seq: int
    # The hash of the last good record: compare it with the head the writer logged.
    head: str
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Walk:
    """Follows the chain record by record; `check` returns what is wrong with the next one."""

    def __init__(self) -> None:
        self.prev: str | None = None
        self.next_seq = 0
        self.first_seq = 0
        self.count = 0

    def check(self, raw: bytes) -> str | None:
        try:
            record = json.loads(raw)
        except ValueError:
            return "not a complete JSON record (cut short or edited)"
        if not isinstance(record, dict) or not {"seq", "prev", "hash"} <= record.keys() \
                or not isinstance(record["seq"], int):
            return "not an audit record (no seq, prev and hash)"
        if digest(record) != record["hash"]:
            return f"record seq {record['seq']} was altered: its hash does not match its content"
        problem = self._link(record)
        if problem is None and record.get("kind") == DROPPED_KIND:
            problem = f"the writer dropped {record.get('count')} records here (its queue was full)"
        if problem is None:
            self._advance(record)
        return problem

    def _link(self, record: dict) -> str | None:
        seq = record["seq"]
        if self.prev is None:
            if seq == 1 and record["prev"] != GENESIS:
                return "the first record (seq 1) does not start the chain"
            return None
        if record["prev"] == self.prev and seq == self.next_seq:
            return None
        if seq > self.next_seq:
            missing = f"{self.next_seq}" if seq == self.next_seq + 1 else f"{self.next_seq}-{seq - 1}"
            return f"record(s) {missing} missing before seq {seq} (deleted, or moved elsewhere)"
        if seq < self.next_seq:
            return f"out of order: seq {seq} follows seq {self.next_seq - 1}"
        return f"record seq {seq} does not link to the record before it (that record was replaced)"

    def _advance(self, record: dict) -> None:
        if self.prev is None:
            self.first_seq = record["seq"]
        self.prev = record["hash"]
        self.next_seq = record["seq"] + 1
        self.count += 1


def verify(paths: Iterable[Path]) -> Verification:
    """Walks the chain through `paths` in the order given (the writer's file names sort in
    chain order) and stops at the first broken or missing record."""
    walk = _Walk()
    files = 0
    for path in paths:
        files += 1
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                problem = walk.check(raw)
                if problem is not None:
                    return Verification(walk.count, files, walk.first_seq, walk.next_seq - 1, walk.prev or "",
                                        Problem(str(path), number, problem))
    return Verification(walk.count, files, walk.first_seq, max(walk.next_seq - 1, 0), walk.prev or "", None)
