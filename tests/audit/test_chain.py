"""The audit log's hash chain: written by AuditLog, checked by verify (and the CLI)."""

import json
from pathlib import Path

import pytest

from services.audit.chain import GENESIS, verify
from services.audit.log import AuditError, AuditLog, chain_files
from services.cli.main import main as cli


def write_log(directory: Path, count: int, *, max_file_bytes: int = 1 << 20, start: int = 0) -> list[Path]:
    audit = AuditLog(directory, max_file_bytes=max_file_bytes, queue_size=10_000)
    audit.open()
    for n in range(start, start + count):
        assert audit.write({"kind": "request", "request_id": f"rid-{n}", "tokens": n})
    audit.close()
    return chain_files(directory)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_a_written_chain_verifies(tmp_path):
    files = write_log(tmp_path, 50)
    result = verify(files)
    assert result.ok and result.records == 50 and (result.first_seq, result.last_seq) == (1, 50)
    first = json.loads(lines(files[0])[0])
    assert first["prev"] == GENESIS and first["request_id"] == "rid-0"


def test_rotation_by_size_links_the_files(tmp_path):
    files = write_log(tmp_path, 60, max_file_bytes=1000)
    assert len(files) > 3
    for earlier, later in zip(files, files[1:]):
        assert earlier.stat().st_size <= 1000
        last = json.loads(lines(earlier)[-1])
        first = json.loads(lines(later)[0])
        assert first["prev"] == last["hash"] and first["seq"] == last["seq"] + 1
        assert later.name == f"audit-{first['seq']:012d}.jsonl"
    assert verify(files).ok and verify(files).records == 60


def test_a_restart_continues_the_chain_in_a_new_file(tmp_path):
    write_log(tmp_path, 5)
    files = write_log(tmp_path, 5, start=5)
    assert len(files) == 2
    result = verify(files)
    assert result.ok and result.records == 10


def test_an_altered_record_is_detected(tmp_path):
    [path] = write_log(tmp_path, 10)
    rows = lines(path)
    rows[4] = rows[4].replace('"tokens":4', '"tokens":40')
    path.write_text("".join(rows))
    result = verify([path])
    assert not result.ok and result.problem.line == 5
    assert "seq 5 was altered" in result.problem.message
    assert result.records == 4


def test_a_deleted_record_is_detected(tmp_path):
    [path] = write_log(tmp_path, 10)
    rows = lines(path)
    del rows[6]
    path.write_text("".join(rows))
    result = verify([path])
    assert result.problem.line == 7 and "record(s) 7 missing before seq 8" in result.problem.message


def test_reordered_records_are_detected(tmp_path):
    [path] = write_log(tmp_path, 10)
    rows = lines(path)
    rows[2], rows[3] = rows[3], rows[2]
    path.write_text("".join(rows))
    result = verify([path])
    assert result.problem.line == 3 and "missing before seq 4" in result.problem.message


def test_a_record_replaced_with_a_resealed_one_is_detected(tmp_path):
    """Recomputing one record's hash after editing it still breaks the next link."""
    from services.audit.chain import seal

    [path] = write_log(tmp_path, 6)
    rows = [json.loads(row) for row in lines(path)]
    forged = seal({**{k: v for k, v in rows[2].items() if k not in ("seq", "prev", "hash")}, "tokens": 99},
                  rows[2]["seq"], rows[2]["prev"])
    rows[2] = forged
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = verify([path])
    assert result.problem.line == 4 and "does not link" in result.problem.message


def test_a_deleted_file_in_the_middle_is_detected(tmp_path):
    files = write_log(tmp_path, 40, max_file_bytes=1000)
    second_first_seq = json.loads(lines(files[2])[0])["seq"]
    result = verify([files[0], files[2], *files[3:]])
    assert result.problem.path == str(files[2]) and result.problem.line == 1
    assert f"missing before seq {second_first_seq}" in result.problem.message


def test_a_cut_line_is_detected(tmp_path):
    [path] = write_log(tmp_path, 3)
    path.write_text(path.read_text()[:-20])
    result = verify([path])
    assert result.problem.line == 3 and "not a complete JSON record" in result.problem.message


def test_a_full_queue_drops_records_and_says_so_in_the_chain(tmp_path):
    audit = AuditLog(tmp_path, max_file_bytes=1 << 20, queue_size=2)
    # Not opened: no writer drains the queue, so the third record finds it full.
    assert audit.write({"n": 1}) and audit.write({"n": 2})
    assert not audit.write({"n": 3})
    audit.open()
    audit.close()
    files = chain_files(tmp_path)
    kinds = [json.loads(row).get("kind") for row in lines(files[0])]
    assert kinds == ["dropped", None, None]
    result = verify(files)
    assert "dropped 1 records" in result.problem.message


def test_one_writer_per_directory(tmp_path):
    first = AuditLog(tmp_path, max_file_bytes=1 << 20, queue_size=10)
    first.open()
    try:
        with pytest.raises(AuditError, match="another process"):
            AuditLog(tmp_path, max_file_bytes=1 << 20, queue_size=10).open()
    finally:
        first.close()


def test_cli_verify_reports_ok_and_the_first_problem(tmp_path, capsys):
    files = write_log(tmp_path, 30, max_file_bytes=1000)
    assert cli(["audit", "verify", *map(str, files)]) == 0
    assert "ok: 30 records" in capsys.readouterr().out
    rows = lines(files[1])
    del rows[1]
    files[1].write_text("".join(rows))
    assert cli(["audit", "verify", *map(str, files)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at {files[1]}:2" in out and "missing" in out
