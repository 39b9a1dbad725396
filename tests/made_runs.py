"""Hand-made run directories, as `rlvr compare` leaves them, for the report and verdict tests."""
from __future__ import annotations

import json
from pathlib import Path

HALF_SOLVED = [4] * 20 + [0] * 20  # 0/4 -> 4/4 correct on half of 40 problems: +50 points hm@4


def write_run(root: Path, arm: str, seed: int, k: int, entropy: list, *, steps: int = 150, correct0=None,
              correct100=None, entropy_onset=None, reward_onset=None, seconds=0.1, peak=400.0, before=300.0,
              extra=None, best=None, samples=None, reward=0.5, evals=None, passk=None, keep_final=True,
              noise=None) -> None:
    """A run directory under root/arm/seed{seed}: per-step entropy, reward, time (`seconds`: one
    value, or one per step) and memory; the per-problem correct counts (of n=4) at steps 0
    (default all 0 of 40) and 100 (default HALF_SOLVED), and at the steps of `evals` ({step:
    counts}); the events of both collapse detectors and the `done` event; optionally
    best/best.json, samples.jsonl and passk.jsonl (`passk`: {step: counts of n=64}, k = 1, 4, 16,
    64). `keep_final=False`: no final/ directory, as a study committed without weights. `noise`:
    step -> the step's grad/* keys (None: a run without the gradient-noise measurement)."""
    from rlvr.config import TrainConfig, to_dict

    correct0 = [0] * 40 if correct0 is None else correct0
    correct100 = HALF_SOLVED if correct100 is None else correct100
    run = root / arm / f"seed{seed}"
    run.mkdir(parents=True)
    config = {**to_dict(TrainConfig()), "k": k, "seed": seed, "steps": steps, **(extra or {})}
    (run / "config.json").write_text(json.dumps({"config": config}))
    (run / "arm.json").write_text(json.dumps({"arm": arm, "variant": "", "order": {"k8": 0, "k16": 1}.get(arm, 2)}))
    rows = [{"step": s, "reward/mean": reward[s - 1] if isinstance(reward, (list, tuple)) else reward, "entropy/mean": entropy[s - 1], "entropy/retention": entropy[s - 1] / entropy[0],
             "reward/zero_signal_frac": 0.1, "diversity/answers": 0.5,
             "perf/step_seconds": seconds[s - 1] if isinstance(seconds, (list, tuple)) else seconds,
             "perf/peak_memory_mib": peak, "perf/memory_before_step_mib": before, **(noise(s) if noise else {})}
            for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = [{"step": s, "n_problems": len(c), "per_problem": [{"id": i, "n": 4, "correct": x, "greedy_correct": 0}
                                                               for i, x in enumerate(c)]}
             for s, c in sorted({0: correct0, 100: correct100, **(evals or {})}.items())]
    (run / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    events = []
    if entropy_onset:
        events.append({"event": "collapse", "step": entropy_onset + 10, "onset": entropy_onset})
    if reward_onset:
        events.append({"event": "reward_collapse", "step": reward_onset + 20, "onset": reward_onset, "reward_ema": 0.1,
                       "reward_ema_best": 0.5, "collapse_ratio": 0.5, "patience": 20, "message": "reward collapse"})
    events.append({"event": "done", "step": steps, "message": "done"})
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if passk:
        rows = [{"step": s, "ks": [1, 4, 16, 64], "n_samples": 64, "n_problems": len(c),
                 "per_problem": [{"id": i, "n": 64, "correct": x} for i, x in enumerate(c)]} for s, c in passk.items()]
        (run / "passk.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if best:
        (run / "best").mkdir()
        (run / "best" / "best.json").write_text(json.dumps({"metric": "hm@4", "ci": [0, 1], "split": "heldout", **best}))
    if samples:
        (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    if keep_final:
        (run / "final").mkdir()
