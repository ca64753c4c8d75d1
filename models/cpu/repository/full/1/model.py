"""Entry point Triton loads for this stand-in; the implementation is shared.

Both stand-ins run models/cpu/standin/model.py; config.pbtxt parameters (and a
version folder's parameters.json) set what differs (per-token delay, answer
length, prompt limit, deliberate failures).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from standin.model import TritonPythonModel  # noqa: E402,F401  (the class Triton looks up)
