"""`python -m services.embedding [ADAPTER.npz ...]`: build and verify the cached ONNX models.

Run ahead of time (make setup, image builds) so no service pays for the export at
start: both precisions of the plain model, int8 of each adapter.
"""

import sys
from pathlib import Path

from services.embedding.embedder import Embedder
from services.embedding.onnx_model import cache_dir

for quantize in (False, True):
    Embedder(quantize=quantize)
for adapter in sys.argv[1:]:
    Embedder(quantize=True, adapter=Path(adapter))
print(f"embedding models ready in {cache_dir()}")
