"""--keep-best, --early-stop, --select-split, samples.jsonl and the reward-collapse detector."""
import json
from pathlib import Path

import pytest

from rlvr.train.preflight import check_train_config
from rlvr.backends import load_policy
from rlvr.cli import main
from rlvr.config import ConfigError, TrainConfig
from rlvr.algo.entropy import CollapseDetector, RewardMonitor
from rlvr.tasks import get_task


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train(out: Path, *args: str) -> int:
    return main(["train", "--out", str(out), "--quiet", "--threads", "1", *args])


def test_best_holds_the_maximum_of_the_evaluations_of_a_150_step_run(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--steps", "150", "--eval-every", "25", "--keep-best", "hm@4", "--eval-problems", "60",
                 "--eval-samples", "8", "--checkpoint-every", "100") == 0
    evals = read_jsonl(out / "evals.jsonl")
    assert [e["step"] for e in evals] == list(range(0, 151, 25))
    values = [e["metrics"]["hm@4"]["value"] for e in evals]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["value"] == max(values) and best["metric"] == "hm@4" and best["split"] == "heldout"
    assert best["step"] == evals[values.index(max(values))]["step"]  # ties keep the earliest
    assert load_policy(str(out / "best")).describe()["backend"] == "tiny"
    last = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/best" in r][-1]
    assert last["eval/best"] == best["value"] and last["eval/best_step"] == best["step"]


def test_early_stop_ends_a_run_that_stops_gaining(tmp_path):
    out = tmp_path / "run"
    # lr 1e-9: the policy does not move, so no evaluation is a significant gain over step 0.
    assert train(out, "--steps", "40", "--lr", "1e-9", "--eval-every", "5", "--early-stop", "2",
                 "--eval-problems", "20", "--eval-samples", "4") == 0
    events = read_jsonl(out / "events.jsonl")
    stop = next(e for e in events if e["event"] == "early_stop")
    assert stop["step"] == 10 and stop["best_step"] in (0, 5, 10)
    assert max(r["step"] for r in read_jsonl(out / "metrics.jsonl")) == 10
    assert (out / "final").is_dir() and events[-1]["event"] == "done" and "early stop" in events[-1]["message"]
    assert train(out, "--steps", "40", "--lr", "1e-9", "--eval-every", "5", "--early-stop", "2",
                 "--eval-problems", "20", "--eval-samples", "4") == 0  # a re-run does not train past the stop
    assert max(r["step"] for r in read_jsonl(out / "metrics.jsonl")) == 10


def test_samples_jsonl_shows_scored_completions_at_each_evaluation(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--steps", "4", "--eval-every", "2", "--eval-problems", "6", "--eval-samples", "4",
                 "--eval-show", "3") == 0
    rows = read_jsonl(out / "samples.jsonl")
    assert [r["step"] for r in rows] == [0] * 6 + [2] * 6 + [4] * 6
    assert [r["kind"] for r in rows[:6]] == ["greedy", "sampled"] * 3
    task = get_task("arith", seed=0)
    items = {task.item("heldout", i)["id"]: task.item("heldout", i) for i in range(3)}
    for row in rows:
        item = items[row["id"]]
        assert row["score"] == task.score(row["completion"], item) and row["answer"] == item["answer"]
        assert row["extracted"] == task.extract_answer(row["completion"])


def test_validation_selection_is_disjoint_from_the_reported_problems(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--steps", "2", "--eval-every", "2", "--eval-problems", "10", "--eval-samples", "4",
                 "--select-split", "validation") == 0
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/selected" in r]
    assert len(rows) == 2 and json.loads((out / "best" / "best.json").read_text())["split"] == "validation"
    from rlvr.eval.runner import heldout_items, validation_items

    task = get_task("arith", seed=0)
    reported = {item["key"] for item in heldout_items(task, 10)}
    chosen = validation_items(task, 10, 10)
    assert len({item["key"] for item in chosen}) == 10 and not reported & {item["key"] for item in chosen}


def test_selection_settings_are_refused_with_the_fix(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(30)))
    cases = [
        (dict(keep_best="hm@16", eval_every=5), "keep_best", "one of pass@1, hm@4, hm@8"),
        (dict(early_stop=3), "early_stop", "--eval-every"),
        (dict(early_stop=3, eval_every=5, keep_best="none"), "early_stop", "--keep-best METRIC"),
        (dict(select_split="test"), "select_split", "heldout or validation"),
        (dict(task=f"jsonl:{data}", eval_every=5, eval_problems=10, select_split="validation"), "select_split",
         "--select-split heldout"),
        (dict(reward_collapse_ratio=1.5), "reward_collapse_ratio", "[0, 1)"),
    ]
    for values, field, fix in cases:
        with pytest.raises(ConfigError) as err:
            check_train_config(TrainConfig(out=str(tmp_path / "run"), **values))
        assert err.value.field == field and fix in str(err.value), (values, str(err.value))


def test_reward_detector_fires_below_a_fraction_of_the_best_ema():
    monitor, detector = RewardMonitor(half_life=1), CollapseDetector(ratio=0.5, patience=3)
    fired = []
    for step, reward in enumerate([0.2, 0.6, 0.6, 0.1, 0.0, 0.0, 0.0, 0.0], start=1):
        monitor.update(reward)
        onset = detector.update(step, monitor.ema, monitor.best)
        if onset is not None:
            fired.append((step, onset))
    # half-life 1: ema halves toward each reward; best 0.5 at step 3, below 0.25 from step 5 on
    assert monitor.best == pytest.approx(0.5) and fired == [(7, 5)]


def test_reward_collapse_fires_at_lr_1e3_and_not_on_the_default_run(tmp_path):
    collapsing, default = tmp_path / "lr1e-3", tmp_path / "default"
    assert train(collapsing, "--steps", "100", "--lr", "1e-3", "--on-collapse", "stop") == 0
    events = read_jsonl(collapsing / "events.jsonl")
    collapse = next(e for e in events if e["event"] == "reward_collapse")
    assert collapse["reward_ema"] < 0.5 * collapse["reward_ema_best"]
    assert not any(e["event"] == "collapse" for e in events)  # entropy alone would not have noticed yet
    assert "reward collapse" in events[-1]["message"]
    assert train(default, "--steps", "250") == 0
    assert not any(e["event"] == "reward_collapse" for e in read_jsonl(default / "events.jsonl"))
