"""Issue-5 controls: the collapse detector, entropy controllers, Clip-Cov / KL-Cov / top-entropy
token selection, and --on-collapse stop / rollback end to end on a forced collapse."""
import json

import pytest
import torch

from rlvr.cli import main
from rlvr.algo.entropy import AdaptiveEntropyCoefficient, CollapseDetector, EntropyMonitor
from rlvr.algo.losses import (LossSettings, clip_cov_keep, kl_cov_select, policy_loss, token_covariance, top_entropy_select)


def run_detector(entropies, ratio, patience):
    monitor, detector = EntropyMonitor(half_life=10), CollapseDetector(ratio, patience)
    fired = []
    for step, h in enumerate(entropies, start=1):
        monitor.update(h)
        onset = detector.update(step, monitor.ema, monitor.initial)
        if onset is not None:
            fired.append((step, onset))
    return fired


def test_detector_fires_at_onset_plus_patience_minus_one_and_not_before():
    # Entropy 1.0 then 0: the EMA is 0.5**(t/10) after t zero-steps; it first drops below 0.3
    # after 18 zero-steps (0.5**1.8 = 0.287 > 0.3? no: 0.5**1.7 = 0.308, 0.5**1.8 = 0.287).
    entropies = [1.0] + [0.0] * 40
    fired = run_detector(entropies, ratio=0.3, patience=10)
    onset = 1 + 18  # step 19 is the first with EMA < 0.3
    assert fired == [(onset + 10 - 1, onset)]
    assert run_detector(entropies[: onset + 8], 0.3, 10) == []  # one step short: silent


def test_detector_rearms_after_recovery_and_ignores_brief_dips():
    dip = [1.0] + [0.0] * 19 + [5.0] * 5  # below from step 19, recovers at step 21
    assert run_detector(dip, ratio=0.3, patience=10) == []
    twice = [1.0] + [0.0] * 30 + [5.0] * 10 + [0.0] * 60
    assert len(run_detector(twice, ratio=0.3, patience=5)) == 2


def test_adaptive_entropy_coefficient_follows_its_rule_and_round_trips():
    c = AdaptiveEntropyCoefficient(0.0, target=1.0, step_size=0.01, max_value=0.025)
    assert [round(c.update(h), 4) for h in (0.5, 0.5, 0.5, 0.5, 2.0, 1.0)] == [0.01, 0.02, 0.025, 0.025, 0.015, 0.015]
    restored = AdaptiveEntropyCoefficient(0.0, 1.0, 0.01, 0.025)
    restored.load_state_dict(c.state_dict())
    assert restored.value == c.value
    assert AdaptiveEntropyCoefficient(0.0, 1.0, 0.01, 0.05).update(3.0) == 0.0  # clipped at 0


def hand_example():
    # Two sequences of two tokens; advantages +1 / −1; log-probs chosen so the covariance is known.
    logprobs = torch.tensor([[-0.1, -3.0], [-0.2, -2.9]], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    return logprobs, advantages, mask


def test_token_covariance_by_hand():
    logprobs, advantages, mask = hand_example()
    cov = token_covariance(logprobs, advantages[:, None].expand(2, 2), mask)
    mean = (-0.1 - 3.0 - 0.2 - 2.9) / 4  # −1.55; the mean advantage is 0
    want = torch.tensor([[1 * (-0.1 - mean), 1 * (-3.0 - mean)], [-1 * (-0.2 - mean), -1 * (-2.9 - mean)]])
    assert torch.allclose(cov, want)


def test_clip_cov_drops_the_gradient_of_in_window_tokens_only():
    logprobs, advantages, mask = hand_example()
    cov = token_covariance(logprobs, advantages[:, None].expand(2, 2), mask)  # [[1.45, -1.45], [-1.35, 1.35]]
    keep = clip_cov_keep(cov, mask, torch.zeros_like(mask), ratio=1.0, bounds=(1.0, 5.0), generator=None)
    assert keep.tolist() == [[False, True], [True, False]]  # both in-window tokens (ratio 1 → all of them)
    settings = LossSettings(0.2, 0.2, "token-mean", clip_cov_ratio=1.0, clip_cov_bounds=(1.0, 5.0))
    loss, metrics = policy_loss(logprobs, logprobs.detach(), advantages, mask, settings, 4, 2)
    loss.backward()
    assert logprobs.grad.tolist() == [[0.0, -0.25], [0.25, 0.0]]  # −A/4 where kept, 0 where cut
    assert metrics["clip/cov_tokens"] == 2
    # ratio 0.25 of 4 tokens → exactly one token is cut, drawn by the generator.
    keep = clip_cov_keep(cov, mask, torch.zeros_like(mask), 0.25, (1.0, 5.0), torch.Generator().manual_seed(0))
    assert int((~keep).sum()) == 1 and not (~keep & (cov < 1.0)).any()


def test_kl_cov_penalises_the_top_covariance_token():
    logprobs, advantages, mask = hand_example()
    cov = token_covariance(logprobs, advantages[:, None].expand(2, 2), mask)
    assert kl_cov_select(cov, mask, 0.25).tolist() == [[True, False], [False, False]]
    old = logprobs.detach() - 0.1  # the policy moved up by 0.1 nats on every token
    settings = LossSettings(0.2, 0.2, "token-mean", kl_cov_ratio=0.25, kl_cov_coef=2.0)
    loss, _ = policy_loss(logprobs, old, advantages, mask, settings, 4, 2)
    plain, _ = policy_loss(logprobs, old, advantages, mask, LossSettings(0.2, 0.2, "token-mean"), 4, 2)
    assert loss.item() == pytest.approx(plain.item() + 2.0 * 0.1 / 4, rel=1e-5)


def test_top_entropy_tokens_selects_the_high_entropy_fraction():
    entropy = torch.tensor([[0.1, 2.0, 0.5], [1.5, 0.0, 3.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert top_entropy_select(entropy, mask, 0.4).tolist() == [[False, True, False], [True, False, False]]


SMALL = ["--task", "add2", "--reward", "shaped_rewards:digit_share", "--steps", "14", "--k", "4",
         "--prompts-per-step", "3", "--max-new-tokens", "6", "--lr", "1e-2", "--checkpoint-every", "2",
         "--keep-checkpoints", "3", "--collapse-ratio", "0.995", "--collapse-patience", "2", "--quiet"]


def events(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_on_collapse_stop_ends_cleanly(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", model_dir, "--out", str(out), "--on-collapse", "stop", *SMALL]
    assert main(args) == 0
    evs = events(out)
    collapse = next(e for e in evs if e["event"] == "collapse")
    stop = next(e for e in evs if e["event"] == "stop")
    assert collapse["step"] == stop["step"] == collapse["onset"] + 1  # patience 2
    assert collapse["entropy_ema"] < 0.995 * collapse["entropy_initial"]
    assert metrics(out)[-1]["step"] == stop["step"] < 14
    assert (out / "final" / "model.safetensors").is_file()
    assert "stopped early (entropy collapse" in capsys.readouterr().out
    assert main(args) == 0  # a re-run does not train past the stop
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("stale", [[], ["--max-staleness", "2", "--async-mode", "concurrent"]],
                         ids=["sync", "async"])
def test_on_collapse_rollback_restores_the_checkpoint_before_onset(model_dir, tmp_path, stale):
    """With --max-staleness the rollback also restores the checkpoint's rollouts generated ahead
    (and the generator's batches in flight are dropped): the staleness stays on its schedule."""
    out = tmp_path / "run"
    assert main(["train", "--model", model_dir, "--out", str(out), "--on-collapse", "rollback",
                 "--max-rollbacks", "1", "--rollback-entropy-boost", "0.05", *SMALL, *stale]) == 0
    evs = events(out)
    rollback = next(e for e in evs if e["event"] == "rollback")
    assert rollback["to_step"] < rollback["onset"] and rollback["to_step"] % 2 == 0
    assert rollback["to_step"] == max(s for s in range(0, rollback["onset"], 2))  # newest before onset
    rows = metrics(out)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps))  # rolled-back rows were replaced, not duplicated
    after = [r for r in rows if r["step"] > rollback["to_step"]]
    assert after and all(r["control/entropy_coef"] == pytest.approx(0.05) for r in after)
    assert all(r["control/rollbacks"] == 1 for r in after)
    if stale:
        assert [r["async/staleness_max"] for r in rows if r["step"]] == [min(r["step"] - 1, 2) for r in rows if r["step"]]
    # A second collapse after the allowed rollbacks stops the run; or it ran to the end.
    if any(e["event"] == "stop" for e in evs):
        assert "--max-rollbacks 1 reached" in next(e for e in evs if e["event"] == "stop")["message"]
    state = torch.load(sorted((out / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)
    assert state["rollbacks"] == 1 and "entropy_controller" in state and "collapse_detector" in state


def test_kl_cov_needs_off_policy_updates(tmp_path, capsys):
    assert main(["train", "--kl-cov", "--out", str(tmp_path / "r")]) == 2
    assert "--kl-cov" in capsys.readouterr().err
