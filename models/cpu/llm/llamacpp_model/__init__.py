"""The real CPU models' shared code: GGUF language models on llama.cpp (see models/cpu/README.md).

Triton's Python-backend stub embeds an interpreter that ignores PYTHONPATH, so the
packages the model needs (numpy, xllamacpp) would be missing; the launcher
(services/triton/launcher.py) sets PYTHONPATH to the suite's environment and it is
applied here, before anything imports them.

llama.cpp runs its threads under OpenMP, whose threads spin while they wait for
work by default. Two models (light and full, one process each) on two cores then
take turns spinning against each other and against the rest of the suite: measured
here, a decoding step went from about 10 ms to 100-280 ms. Passive waiting has to be
set before libgomp loads, that is before xllamacpp is imported.
"""

import os
import sys

for _entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
