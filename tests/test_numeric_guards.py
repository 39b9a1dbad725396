"""Non-finite steps are skipped and counted; too many in a row stop the run, keeping the checkpoints."""
import json

import torch

import rlvr.train.step
from rlvr.cli import main

real_policy_loss = rlvr.train.step.policy_loss


def poison_steps(monkeypatch, bad_steps: set[int], value: float = float("nan")):
    """Makes the loss of the given (1-based) steps non-finite; returns the list of steps seen."""
    seen = []

    def policy_loss(*args, **kwargs):
        loss, metrics = real_policy_loss(*args, **kwargs)
        step = len(seen) + 1
        return (loss * value if step in bad_steps else loss), metrics

    def train_step(*args, **kwargs):
        result = real_train_step(*args, **kwargs)
        seen.append(result.skipped)
        return result

    real_train_step = rlvr.train.step.train_step
    monkeypatch.setattr(rlvr.train.step, "policy_loss", policy_loss)
    monkeypatch.setattr(rlvr.train.step, "train_step", train_step)
    return seen


def run(model_dir, out, *extra):
    return main(["train", "--model", model_dir, "--task", "add2", "--reward", "shaped_rewards:digit_share",
                 "--reward-workers", "0", "--k", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                 "--out", str(out), "--quiet", *extra])


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_non_finite_loss_is_skipped_and_counted(model_dir, tmp_path, monkeypatch):
    seen = poison_steps(monkeypatch, {2}, float("inf"))
    assert run(model_dir, tmp_path / "run", "--steps", "3") == 0
    assert seen == [None, "loss", None]
    assert [r["optim/skipped"] for r in rows(tmp_path / "run")] == [0, 1, 0]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["cause"]) for e in events if e["event"] == "nan_skip"] == [(2, "loss")]


def test_max_bad_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(model_dir, tmp_path, monkeypatch,
                                                                                capsys):
    out = tmp_path / "run"
    poison_steps(monkeypatch, {3, 4, 5, 6})
    code = run(model_dir, out, "--steps", "8", "--checkpoint-every", "2", "--keep-checkpoints", "2",
               "--max-bad-steps", "3")
    err = capsys.readouterr().err
    assert code == 1 and "--max-bad-steps: 3 steps in a row (up to step 5)" in err and "Traceback" not in err
    assert [r["optim/skipped"] for r in rows(out)] == [0, 0, 1, 1, 1]
    assert not (out / "final").exists()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stop" and events[-1]["step"] == 5
    # Skipped steps never change the weights: the step-4 checkpoint holds step 2's, all finite.
    state = torch.load(out / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    step2 = torch.load(out / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["model"].keys() == step2["model"].keys()
    assert all(torch.equal(state["model"][name], step2["model"][name]) for name in step2["model"])
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["bad_steps"] == 2
