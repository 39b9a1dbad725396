"""`rlvr plan`: the zero-signal estimate against brute-force enumeration, and a tiny end-to-end plan."""
import itertools
import json

import numpy as np
import pytest

from rlvr.cli import main
from rlvr.study.plan import zero_signal_expectation


@pytest.mark.parametrize("n, k", [(6, 2), (6, 3), (8, 8), (5, 4)])
def test_zero_signal_estimate_equals_enumerating_every_subset(n, k):
    """Mean over all K-subsets of the n pilot samples of [all equal]: the unbiased estimate."""
    correct = np.arange(n + 1)  # every possible count
    expected = []
    for c in correct:
        outcomes = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        expected.append(np.mean([len({outcomes[i] for i in s}) == 1 for s in subsets]))
    np.testing.assert_allclose(zero_signal_expectation(correct, n, k), expected, rtol=1e-12)


def test_plan_prints_and_writes_one_row_per_k(model_dir, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", model_dir, "--k", "2", "4", "--steps", "2", "--prompts-per-step", "2",
                 "--pilot-prompts", "6", "--max-new-tokens", "6", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["k"] for r in rows] == [2, 4] and rows[0]["step_time_ratio"] == 1.0
    assert all(0 <= r["zero_signal_frac"] <= 1 and r["step_seconds"] > 0 and r["pilot_samples"] == 4 for r in rows)
    assert rows[1]["zero_signal_frac"] <= rows[0]["zero_signal_frac"] + 1e-12  # more samples, fewer all-equal groups
    assert all(r["noise_steps"] == 2 and "noise_scale" in r and "noise_intra_share" in r for r in rows)
    printed = capsys.readouterr().out
    assert "rlvr plan" in printed and "Gradient noise: " in printed


def test_plan_reads_the_noise_scale_from_sums_and_says_what_it_implies():
    from rlvr.study.plan import noise_reading, pilot_noise

    rows = [{"grad/signal": s, "grad/noise": n, "grad/noise_intra": i, "sampling/effective_k": 8}
            for s, n, i in ((2.0, 100.0, 400.0), (-1.0, 60.0, 240.0))]
    noise = pilot_noise(rows)
    assert noise["noise_scale"] == pytest.approx(160.0) and noise["noise_intra_share"] == pytest.approx(640 / 8 / 160)
    assert pilot_noise([])["noise_scale"] is None
    text = noise_reading([{"k": 8, "noise_scale": 160.0}, {"k": 16, "noise_scale": 3.0},
                          {"k": 32, "noise_scale": None}], prompts=8)
    assert "at K = 8 B_simple is well above B = 8" in text and "at K = 16 it is below B = 8" in text
    assert "at K = 32 the summed |G|² of the timed steps is not positive" in text


def test_plan_refuses_a_pilot_smaller_than_k(capsys):
    assert main(["plan", "--k", "8", "16", "--pilot-samples", "8"]) == 2
    assert "--pilot-samples: must be ≥ the largest K (16)" in capsys.readouterr().err
