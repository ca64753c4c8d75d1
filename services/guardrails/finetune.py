"""Fine-tunes all-MiniLM-L6-v2 for injection detection with low-rank adapters (LoRA).

Only used by `python -m services.guardrails.train` (imports torch). The base
weights stay frozen; each linear layer of the kept transformer blocks (all six by
default) gets a rank-8 update B @ A, trained together with a logistic head on the
mean-pooled, L2-normalised sentence vector, the same vector the service's embedder
returns. The adapter (about 330k numbers for six blocks) is saved as `.npz` and
merged into the base weights when the service's ONNX model is built
(services/embedding/onnx_model.py), so serving costs exactly one plain embedding.

The encoder can be cut to its first blocks (`layers`, `train --layers`), at a
price in quality (services/guardrails/README.md); a cut adapter records its
block count, so the ONNX model is cut the same way.

Why: on grouped cross-validation of the deepset training split the learned
signal alone reached F1 0.93 tuned against 0.85 for logistic regressions on the
frozen embedding plus character n-grams (see services/guardrails/README.md).
Three epochs over the 1,654 training rows: about as many steps as the six epochs
over the 616 rows of the first recipe, and what fits the training time.
"""

import math

import numpy as np
import torch

from services.embedding.onnx_model import (
    ADAPTER_LAYERS_KEY, ADAPTER_SCALE_KEY, ADAPTER_TARGETS, BLOCKS, keep_layers, mean_pooled, model_tokenizer,
)

RANK = 8
ALPHA = 16
EPOCHS = 3
LEARNING_RATE = 1e-3
BATCH = 16
MAX_TOKENS = 256
SEED = 0
# Batches per pool sorted by length (see _epoch_order).
BUCKET_BATCHES = 8


class _LowRank(torch.nn.Module):
    """A frozen linear layer plus a trainable update scale * B @ A (B starts at zero)."""

    def __init__(self, base: torch.nn.Linear):
        super().__init__()
        self.base = base
        self.scale = ALPHA / RANK
        self.A = torch.nn.Parameter(torch.randn(RANK, base.in_features) / math.sqrt(base.in_features))
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, RANK))

    def forward(self, x):
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


class TunedClassifier(torch.nn.Module):
    def __init__(self, model_dir, layers: int = BLOCKS):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
        keep_layers(self.encoder, layers)
        self.layers = layers
        for parameter in self.encoder.parameters():
            parameter.requires_grad = False
        self.adapted: dict[str, _LowRank] = {}
        for name, module in list(self.encoder.named_modules()):
            for target in ADAPTER_TARGETS:
                if name.endswith(target) and isinstance(module, torch.nn.Linear):
                    parent_name, _, child = name.rpartition(".")
                    wrapped = _LowRank(module)
                    setattr(self.encoder.get_submodule(parent_name), child, wrapped)
                    self.adapted[name] = wrapped
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)

    def forward(self, ids, mask):
        return self.head(mean_pooled(self.encoder, ids, mask)).squeeze(-1)

    def save_adapter(self, path) -> None:
        arrays = {ADAPTER_SCALE_KEY: np.asarray(ALPHA / RANK, dtype=np.float32)}
        if self.layers < BLOCKS:  # the whole model needs no cut (and its files stay as they were)
            arrays[ADAPTER_LAYERS_KEY] = np.asarray(self.layers, dtype=np.int64)
        for name, module in sorted(self.adapted.items()):
            arrays[f"{name}.A"] = module.A.detach().numpy().astype(np.float32)
            arrays[f"{name}.B"] = module.B.detach().numpy().astype(np.float32)
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    def head_weights(self) -> tuple[np.ndarray, float]:
        return self.head.weight.detach().numpy()[0].astype(np.float32), float(self.head.bias.detach()[0])


def _batches(tokenizer, texts: list[str], order: np.ndarray, size: int):
    for start in range(0, len(order), size):
        chosen = order[start:start + size]
        encodings = tokenizer.encode_batch([texts[i] for i in chosen])
        yield (chosen, torch.tensor([e.ids for e in encodings]), torch.tensor([e.attention_mask for e in encodings]))


def _epoch_order(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """A random order in which each batch holds rows of similar length.

    Rows are shuffled, cut into pools of BUCKET_BATCHES batches, sorted by length
    inside each pool, and the batches are shuffled again: padding (every row is
    padded to its batch's longest) is most of the cost when short questions share a
    batch with 256-token stories.
    """
    order = rng.permutation(len(lengths))
    pool = BATCH * BUCKET_BATCHES
    order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                            for chunk in np.array_split(order, max(1, -(-len(order) // pool)))])
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def fit(model_dir, texts: list[str], labels: np.ndarray, layers: int = BLOCKS) -> TunedClassifier:
    """Trains adapters and head on (texts, labels) with the first `layers` blocks;
    deterministic for one machine and thread count."""
    torch.manual_seed(SEED)
    model = TunedClassifier(model_dir, layers)
    tokenizer = model_tokenizer(model_dir, MAX_TOKENS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.01)
    steps = EPOCHS * math.ceil(len(texts) / BATCH)
    # Linear warm-up over the first 10% of steps, then linear decay to zero.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / (0.1 * steps)) * max(0.0, (steps - step) / steps))
    # Attacks are the minority class; weight them like class_weight="balanced".
    positive_weight = torch.tensor((labels == 0).sum() / max(1, (labels == 1).sum()), dtype=torch.float32)
    target = torch.tensor(labels, dtype=torch.float32)
    rng = np.random.default_rng(SEED)
    # Real tokens per row (encode_batch pads every row to the longest).
    lengths = np.asarray([sum(e.attention_mask) for e in tokenizer.encode_batch(texts)])
    model.train()
    for _ in range(EPOCHS):
        for chosen, ids, mask in _batches(tokenizer, texts, _epoch_order(rng, lengths), BATCH):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, mask), target[chosen],
                                                                        pos_weight=positive_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def predict(model: TunedClassifier, model_dir, texts: list[str]) -> np.ndarray:
    tokenizer = model_tokenizer(model_dir, MAX_TOKENS)
    out = np.zeros(len(texts))
    by_length = np.argsort([sum(e.attention_mask) for e in tokenizer.encode_batch(texts)], kind="stable")
    with torch.no_grad():
        for chosen, ids, mask in _batches(tokenizer, texts, by_length, 64):
            out[chosen] = torch.sigmoid(model(ids, mask)).numpy()
    return out
