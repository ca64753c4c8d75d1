"""Triton command line and backend directory (services/triton/launcher.py)."""

import threading
from pathlib import Path

from services.triton.launcher import DEFAULT_MODEL_REPOSITORY, prepare_backends, resolve_repository, triton_command


def test_command_binds_loopback_on_the_given_ports():
    argv, env = triton_command(DEFAULT_MODEL_REPOSITORY, 9001, 9000, 9002)
    assert Path(argv[0]).name == "tritonserver" and Path(argv[0]).is_file()
    for flag in ("--grpc-port=9001", "--http-port=9000", "--metrics-port=9002", "--grpc-address=127.0.0.1",
                 "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in argv
    assert f"--model-repository={DEFAULT_MODEL_REPOSITORY / 'repository'}" in argv
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    assert Path(env["PYTHONPATH"], "numpy").is_dir()


def test_repository_folder_is_used_as_is_or_through_its_repository_subfolder(tmp_path):
    assert resolve_repository(tmp_path) == tmp_path.resolve()
    (tmp_path / "repository").mkdir()
    assert resolve_repository(tmp_path) == tmp_path.resolve() / "repository"


def test_backends_are_prepared_once_even_by_concurrent_callers(tmp_path):
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(prepare_backends(tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    python = results[0] / "python"
    assert (python / "triton_python_backend_stub").is_file() and (python / "libtriton_python.so").is_file()
    assert [p.name for p in results[0].iterdir()] == ["python"], "no staging leftovers"
    assert prepare_backends(tmp_path) == results[0]
