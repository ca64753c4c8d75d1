"""Summary statistics the evaluations and benchmarks share."""

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (numpy's linear interpolation); 0.0 for no values."""
    return float(np.percentile(np.asarray(values), q)) if len(values) else 0.0
