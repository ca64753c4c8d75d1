"""The stand-in models' shared code (see models/cpu/README.md).

Triton's Python-backend stub embeds an interpreter that ignores PYTHONPATH, so the
packages the model needs (numpy) would be missing; the launcher
(services/triton/launcher.py) sets PYTHONPATH to the suite's environment and it is
applied here, before anything imports numpy.
"""

import os
import sys

for _entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)
