"""How the training picks its block point from out-of-fold scores (no model is trained here)."""

import numpy as np
import pytest

from services.guardrails.train import C_GRID, MAX_BENIGN_BLOCKED, Cascade, cap_curve, choose_block


def _cascade() -> Cascade:
    """100 benign rows, 5 of which look like attacks (0.7), and 100 attacks, half of them
    confident (0.9), half at 0.7: blocking the uncertain half blocks 5% of the benign rows."""
    benign = [0.1] * 95 + [0.7] * 5
    attacks = [0.9] * 50 + [0.7] * 50
    labels = np.asarray([0] * len(benign) + [1] * len(attacks))
    scores = np.asarray(benign + attacks)
    # The same score from both learned signals: the gate does not change the learned probability.
    return Cascade(labels=labels, rule=np.zeros(len(labels)), lexical={c: scores for c in C_GRID},
                   semantic=scores, unseen=np.ones(len(labels), dtype=bool))


def test_the_block_point_blocks_no_more_benign_rows_than_the_cap():
    chosen = choose_block(_cascade())
    assert chosen["benign_blocked"] <= MAX_BENIGN_BLOCKED
    # Only the confident attacks can be blocked under a 2% cap.
    assert chosen["block_point"] > 0.7
    assert chosen["recall"] == pytest.approx(0.5)
    assert chosen["f1"] == pytest.approx(2 / 3, abs=1e-4)


def test_the_cap_curve_shows_what_a_looser_cap_would_have_blocked():
    curve = cap_curve(_cascade())
    assert curve["0.02"]["f1"] == choose_block(_cascade())["f1"]
    assert curve["0.03"]["recall"] == pytest.approx(0.5)  # 5% of benign rows still over the cap
    assert curve["0.05"]["recall"] == pytest.approx(1.0)
    assert curve["0.05"]["benign_blocked"] == pytest.approx(0.05)
    assert curve["0.05"]["f1"] == pytest.approx(100 / 102.5, abs=1e-4)
    f1s = [curve[cap]["f1"] for cap in sorted(curve)]
    assert f1s == sorted(f1s)
