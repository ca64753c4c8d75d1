"""AuditLog: appends sealed records (chain.py) to JSON Lines files, off the request path.

`write` only puts the record in a bounded queue and returns; one writer thread
seals, appends and flushes in batches, so a slow disk never holds up a request or
the event loop. When the queue is full, `write` drops the record and returns False
(counted in llmsuite_audit_records_total{outcome="dropped"} and logged); the writer
then writes a `dropped` record with the count before its next record, so the
file itself says records are missing and `llmsuite audit verify` reports it. A
full queue means the disk cannot keep up: blocking requests on it instead would
turn a disk stall into an outage.

`close` writes everything queued before it returns (the service calls it after its
server stopped, so every answered request's record is in the queue by then), then
syncs the file to disk.

Files: `<dir>/audit-<first seq>.jsonl` (12 digits, so names sort in chain order). A
file that would grow past `max_file_bytes` is closed and the next record starts a
new one, whose first record carries the last hash of the previous file. A start
continues the chain from the newest file's last record, in a new file. One
process per directory: a lock file keeps a second one out, since two writers
would fork the chain.
"""

import fcntl
import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from prometheus_client import Counter, Gauge

from services.audit.chain import DROPPED_KIND, GENESIS, canonical, seal

log = logging.getLogger(__name__)

RECORDS = Counter("llmsuite_audit_records_total", "Audit records, by outcome (written, dropped: queue full, failed: write error).", ["outcome"])
QUEUE_DEPTH = Gauge("llmsuite_audit_queue_depth", "Audit records waiting for the writer thread.")

FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"
# Records the writer takes from the queue per write and flush.
_BATCH = 256
_STOP = object()


class AuditError(Exception):
    """The audit log cannot be opened (directory not writable, another writer holds it)."""


def utc_time(at: float) -> str:
    """The time format of audit records: UTC, ISO 8601, milliseconds (`at` in Unix seconds)."""
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    """Now, in the time format of audit records."""
    return utc_time(time.time())


def chain_files(directory: Path) -> list[Path]:
    """The directory's audit files in chain order."""
    return sorted(path for path in directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if path.is_file())


def _last_record(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the file's last complete record, if any."""
    last = None
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("seq"), int) and "hash" in record:
                last = (record["seq"], record["hash"])
    return last


class AuditLog:
    def __init__(self, directory: Path, *, max_file_bytes: int, queue_size: int):
        self.directory = Path(directory)
        self._max_file_bytes = max_file_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._seq = 0
        self._prev = GENESIS
        self._file: BinaryIO | None = None
        self._file_bytes = 0
        self._lock_file = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Takes the directory, finds the chain's head and starts the writer thread."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / ".lock", "a")
        except OSError as err:
            raise AuditError(f"cannot use audit directory {self.directory}: {err.strerror}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise AuditError(f"another process writes the audit log in {self.directory}; "
                             "give every replica its own directory") from None
        for path in reversed(chain_files(self.directory)):
            head = _last_record(path)
            if head is not None:
                self._seq, self._prev = head
                break
        log.info("audit log in %s continues the chain at seq %d", self.directory, self._seq + 1,
                 extra={"audit_seq": self._seq, "audit_head": self._prev})
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def write(self, entry: dict) -> bool:
        """Queues a record; False when the queue was full and the record was dropped."""
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            with self._dropped_lock:
                self._dropped += 1
                first = self._dropped == 1
            RECORDS.labels("dropped").inc()
            if first:
                log.error("audit queue full: records are being dropped (the disk cannot keep up)")
            return False
        QUEUE_DEPTH.set(self._queue.qsize())
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Writes everything queued, syncs and closes; blocks until done (or `timeout_s`)."""
        if self._thread is None:
            return
        try:
            # Waits while the queue is full: the writer is draining it.
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("audit writer did not finish within %.0fs; records may be missing", timeout_s)
        self._thread = None
        self._lock_file.close()

    # The writer thread.

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for entry in batch:
                if entry is _STOP:
                    stop = True
                    continue
                try:
                    self._append(entry)
                except OSError:
                    RECORDS.labels("failed").inc()
                    log.exception("audit write failed; the writer goes on with the next record")
            if self._file is not None:
                self._file.flush()
            QUEUE_DEPTH.set(self._queue.qsize())
        self._mark_dropped()
        self._close_file()

    def _append(self, entry: dict) -> None:
        self._mark_dropped()
        self._append_line(entry)
        RECORDS.labels("written").inc()

    def _mark_dropped(self) -> None:
        """Records, at this point of the chain, how many records the full queue turned away."""
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            self._append_line({"kind": DROPPED_KIND, "time": utc_now(), "count": dropped})

    def _append_line(self, entry: dict) -> None:
        record = seal(entry, self._seq + 1, self._prev)
        line = canonical(record) + b"\n"
        if self._file is not None and self._file_bytes and self._file_bytes + len(line) > self._max_file_bytes:
            self._close_file()
        if self._file is None:
            path = self.directory / f"{FILE_PREFIX}{record['seq']:012d}{FILE_SUFFIX}"
            self._file = open(path, "ab")
            self._file_bytes = path.stat().st_size
        self._file.write(line)
        self._file_bytes += len(line)
        self._seq, self._prev = record["seq"], record["hash"]

    def _close_file(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        name = os.path.basename(self._file.name)
        self._file.close()
        self._file = None
        # The head, logged: it anchors the chain's end (chain.py says why).
        log.info("audit file %s closed at seq %d", name, self._seq,
                 extra={"audit_file": name, "audit_seq": self._seq, "audit_head": self._prev})
