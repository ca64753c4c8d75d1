import sys

from tests.harness import REPO

# The real models' pure modules (transcript, settings, weights) import as Triton's
# stub imports them: from the folder that holds the llamacpp_model package.
sys.path.insert(0, str(REPO / "models" / "cpu" / "llm"))
