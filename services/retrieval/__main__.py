import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a
# shared or oversubscribed CPU, spinning threads wait on a descheduled peer at every
# parallel region; measured here under load, one query embedding took 225 ms (p50)
# with the default policy and 15 ms with PASSIVE, and batched ingest ran faster too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from services.common.server import main  # noqa: E402
from services.retrieval.app import create  # noqa: E402
from services.retrieval.config import RetrievalSettings  # noqa: E402

main("retrieval", RetrievalSettings, create)
