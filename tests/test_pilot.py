"""The long study's pre-registered pilot rule (rlvr/study/pilot.py) on hand-made pilot files.

Each arm's entropy and reward paths are built so the rule's figures are known by hand: entropy
1.0 on steps 1-5 and ``late`` on steps 91-100 (anything between in the middle steps), reward
``reward`` on steps 81-100.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.study import pilot


def write_arm(root, name, late, reward, steps=100, config=None, coef=None, seed=300):
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    rows = []
    for s in range(1, steps + 1):
        entropy = 1.0 if s <= 5 else (late if s > 90 else 0.3 + 0.01 * s)
        row = {"step": s, "entropy/mean": entropy,
               "reward/mean": reward if s > 80 else 0.9 - reward,
               "control/entropy_coef": coef(s) if coef else 0.0, "clip/cov_tokens": 6.0}
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.json").write_text(json.dumps({"config": {"k": 16, **(config or {})}}))
    return run


def test_figures_match_the_hand_computed_windows(tmp_path):
    run = write_arm(tmp_path, "k16", late=0.25, reward=0.4)
    # A resumed run repeats steps: the last copy of a step counts.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 100, "entropy/mean": 0.35, "reward/mean": 0.4}) + "\n")
    f = pilot.arm_figures(run, 100)
    assert f["entropy_first5"] == pytest.approx(1.0)
    assert f["entropy_last10"] == pytest.approx((0.25 * 9 + 0.35) / 10)
    assert f["retention"] == pytest.approx(0.26)
    assert f["reward_last20"] == pytest.approx(0.4)


def test_two_passing_controls_are_taken_by_retention(tmp_path):
    write_arm(tmp_path, "k16", late=0.3, reward=0.50)
    write_arm(tmp_path, "a", late=0.6, reward=0.46)   # passes
    write_arm(tmp_path, "b", late=0.8, reward=0.47)   # passes, higher retention
    write_arm(tmp_path, "c", late=0.9, reward=0.40)   # highest retention, costs 0.10 reward
    write_arm(tmp_path, "d", late=0.55, reward=0.60)  # passes, lowest retention of the three
    result = pilot.select(pilot.read_pilot(tmp_path, 100), "k16")
    assert result["passing"] == ["b", "a", "d"]
    assert result["chosen"] == ["b", "a"]
    assert result["reward_floor"] == pytest.approx(0.45)


def test_a_free_place_goes_to_the_highest_retention_at_no_reward_cost(tmp_path):
    write_arm(tmp_path, "k16", late=0.3, reward=0.50)
    write_arm(tmp_path, "a", late=0.7, reward=0.49)   # passes
    write_arm(tmp_path, "b", late=0.45, reward=0.30)  # below bar, costs reward
    write_arm(tmp_path, "c", late=0.40, reward=0.48)  # below bar, no cost -> fills
    write_arm(tmp_path, "d", late=0.35, reward=0.52)  # below bar, no cost, lower retention
    result = pilot.select(pilot.read_pilot(tmp_path, 100), "k16")
    assert result["passing"] == ["a"]
    assert result["chosen"] == ["a", "c"]
    assert "fills" in result["why"]["c"]


def test_when_every_control_costs_reward_the_single_highest_retention_runs(tmp_path):
    write_arm(tmp_path, "k16", late=0.3, reward=0.50)
    write_arm(tmp_path, "a", late=0.7, reward=0.30)
    write_arm(tmp_path, "b", late=0.9, reward=0.20)
    result = pilot.select(pilot.read_pilot(tmp_path, 100), "k16")
    assert result["passing"] == [] and result["chosen"] == ["b"]


def test_entropy_target_tracking_and_cap(tmp_path):
    write_arm(tmp_path, "k16", late=0.3, reward=0.5)
    run = write_arm(tmp_path, "target", late=0.8, reward=0.5,
                    config={"entropy_target": 0.9, "entropy_coef_max": 0.2},
                    coef=lambda s: min(0.2, 0.01 * s))
    t = pilot.arm_figures(run, 100)["tracking"]
    # steps 51-90: 0.3 + 0.01 s, steps 91-100: 0.8
    expected = (sum(abs(0.3 + 0.01 * s - 0.9) for s in range(51, 91)) + 10 * 0.1) / 50
    assert t["mean_abs_error_second_half"] == pytest.approx(expected)
    assert t["at_cap_last20"] is True and t["coef_max_reached"] == pytest.approx(0.2)
    assert t["coef_path"]["10"] == pytest.approx(0.1)
    text = pilot.markdown(pilot.select(pilot.read_pilot(tmp_path, 100), "k16"))
    assert "the target was not held" in text
    # A run's config names every setting: entropy_target 0 (the default) is no target, nothing to track
    fixed = write_arm(tmp_path, "coef", late=0.5, reward=0.5, config={"entropy_target": 0.0, "entropy_coef": 0.05},
                      coef=lambda s: 0.05)
    assert "tracking" not in pilot.arm_figures(fixed, 100)
    assert "coef: mean" not in pilot.markdown(pilot.select(pilot.read_pilot(tmp_path, 100), "k16"))


def test_the_committed_pilot_recomputes_to_its_committed_choice():
    """docs/study_smollm2_long/pilot holds the pilot's light files and the rule's result as run."""
    root = Path(__file__).resolve().parents[1] / "docs" / "study_smollm2_long" / "pilot"
    committed = json.loads((root / "pilot.json").read_text())
    again = pilot.select(pilot.read_pilot(root, 100), "k16")
    assert again["chosen"] == committed["chosen"] and again["passing"] == committed["passing"]
    for name, arm in committed["arms"].items():
        assert again["arms"][name]["retention"] == pytest.approx(arm["retention"])
        assert again["arms"][name]["reward_last20"] == pytest.approx(arm["reward_last20"])


def test_an_unfinished_arm_or_missing_plain_is_refused_with_the_fix(tmp_path, capsys):
    write_arm(tmp_path, "k16", late=0.3, reward=0.5)
    write_arm(tmp_path, "a", late=0.6, reward=0.5, steps=60)
    with pytest.raises(ValueError, match="reached 60.*resumes"):
        pilot.read_pilot(tmp_path, 100)
    assert pilot.main([str(tmp_path)]) == 2
    assert "reached 60" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--plain"):
        pilot.select({"a": {"retention": 1.0, "reward_last20": 0.5}}, "k16")


def test_main_writes_json_and_prints_the_table(tmp_path, capsys):
    write_arm(tmp_path / "p", "k16", late=0.3, reward=0.5)
    write_arm(tmp_path / "p", "coef", late=0.6, reward=0.5, config={"entropy_coef": 0.05})
    assert pilot.main([str(tmp_path / "p"), "--write", str(tmp_path / "pilot.json")]) == 0
    assert json.loads((tmp_path / "pilot.json").read_text())["chosen"] == ["coef"]
    assert "| coef | 0.60 |" in capsys.readouterr().out
