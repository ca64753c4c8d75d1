"""Entry point Triton loads for this model version; the implementation is shared.

Both models run models/cpu/llm/llamacpp_model/model.py; config.pbtxt parameters
(and this folder's parameters.json, if a version has one) set what differs.
"""

import sys
from pathlib import Path

# models/cpu/llm holds the models' package; models/cpu, the Triton I/O both repositories share.
sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[4])]

from llamacpp_model.model import TritonPythonModel  # noqa: E402,F401  (the class Triton looks up)
