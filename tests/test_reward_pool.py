"""The reward pool contains every kind of verifier failure and keeps scoring with fresh workers."""
import json


from rlvr.cli import main
from rlvr.rewards.pool import RewardPool
from rlvr.rewards.verifiers import BAD_VALUE, CRASH, EXCEPTION, TIMEOUT

EXPECTED = {"ok": (0.25, None), "sleep": (None, TIMEOUT), "raise": (None, EXCEPTION), "nan": (None, BAD_VALUE),
            "string": (None, BAD_VALUE), "big": (None, BAD_VALUE), "exit": (None, CRASH), "print": (0.25, None)}


def test_each_failure_kind_is_contained_and_the_pool_recovers():
    texts = ["ok", "sleep", "ok", "raise", "nan", "exit", "string", "big", "print", "sleep", "ok"]
    with RewardPool("bad_rewards:by_text", "add2", 0, workers=2, timeout=0.5) as pool:
        outcomes = pool.score(texts, [{"id": str(i)} for i in range(len(texts))])  # two timeouts, three replacements
        assert [(o.value, o.kind) for o in outcomes] == [EXPECTED[t] for t in texts]
        assert "--reward-timeout 0.5" in outcomes[1].detail and "RuntimeError: boom" in outcomes[3].detail
        again = pool.score(["ok", "raise", "ok"], [{"id": "a"}] * 3)  # replaced workers serve the next step
        assert [o.kind for o in again] == [None, EXCEPTION, None]


def test_in_process_mode_catches_exceptions_and_bad_values():
    texts = ["ok", "raise", "nan", "string", "big", "print"]
    with RewardPool("bad_rewards:by_text", "add2", 0, workers=0, timeout=0.5) as pool:
        outcomes = pool.score(texts, [{}] * len(texts))
    assert [(o.value, o.kind) for o in outcomes] == [EXPECTED[t] for t in texts]


def test_task_verifier_in_workers_matches_in_process():
    from rlvr.tasks import get_task

    task = get_task("arith", seed=3)
    items = [task.item("train", i) for i in range(6)]
    texts = [item["answer"] if i % 2 else "0" for i, item in enumerate(items)]
    with RewardPool("task", "arith", 3, workers=2, timeout=10) as pool:
        values = [o.value for o in pool.score(texts, items)]
    assert values == [task.score(t, item) for t, item in zip(texts, items)]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_with_hanging_raising_nan_and_crashing_rewards_finishes_with_counts(model_dir, tmp_path):
    """Items cycle through sleep-forever, raise, NaN, os._exit and a normal score (bad_rewards.misbehave)."""
    out = tmp_path / "run"
    k, prompts = 2, 5
    code = main(["train", "--model", model_dir, "--task", "add2", "--reward", "bad_rewards:misbehave",
                 "--reward-timeout", "0.5", "--max-reward-error-frac", "1", "--reward-error-value", "0.1",
                 "--steps", "2", "--k", str(k), "--prompts-per-step", str(prompts), "--max-new-tokens", "4",
                 "--out", str(out), "--quiet"])
    assert code == 0
    rows = read_jsonl(out / "metrics.jsonl")
    for row in rows:  # per step: one item of each kind, K calls each
        assert row["reward/errors"] == 4 * k and row["reward/timeouts"] == k, row
    events = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "reward_error"]
    assert sorted((e["step"], e["kind"], e["count"]) for e in events) == sorted(
        (s, kind, k) for s in (1, 2) for kind in (TIMEOUT, EXCEPTION, BAD_VALUE, CRASH))
    assert all(e["item"].startswith("add2/train/") for e in events)
    # Each step: 8 failed calls at --reward-error-value 0.1, and the 2 calls of the scoring item at
    # 1.0 or 0.5 each (bad_rewards.misbehave) -> a mean of 0.18, 0.23 or 0.28. Failures scored 0
    # would give 0.10-0.20, failures left out of the mean 0.50-1.00.
    for row in rows:
        assert any(abs(row["reward/mean"] - (8 * 0.1 + scored) / 10) < 1e-6 for scored in (1.0, 1.5, 2.0)), row


def test_too_many_reward_errors_stop_the_run_with_exit_1(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", model_dir, "--task", "add2", "--reward", "bad_rewards:always_raises",
                 "--reward-workers", "0", "--steps", "3", "--k", "2", "--prompts-per-step", "2",
                 "--max-new-tokens", "4", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "--max-reward-error-frac" in err and "4 of 4 verifier calls failed at step 1" in err
    assert "Traceback" not in err
    events = read_jsonl(out / "events.jsonl")
    assert events[-1]["event"] == "stop" and not (out / "final").exists()
