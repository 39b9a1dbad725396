"""The evaluations inside a training run: held-out HM@k / pass@k at step 0 and every
--eval-every steps, the paired gain over step 0, eval.json, --keep-best / --early-stop's
choice of the best evaluation (on the held-out problems or a disjoint validation slice), and
--passk-eval-samples' wide evaluation at step 0 and at the end (pass@k up to k = 64)."""
from __future__ import annotations

import hashlib
import json
from functools import partial

from rlvr import distributed
from rlvr.algo.stats import paired_bootstrap_gain, pass_at_k_per_problem, per_problem_values, summarize_metric
from rlvr.config import TrainConfig, to_dict
from rlvr.distributed import World
from rlvr.eval.runner import (EVAL_KS, HEADLINE, evaluate_policy, flat_eval_metrics, heldout_items, sampling_record,
                              validation_items)
from rlvr.train.checkpoint import write_text_atomic
from rlvr.train.rundir import RunDir, RunLogs, read_json, read_jsonl
from rlvr.train.state import RunState, stream_seed
from rlvr.types import Truncation

PASSK_KS = (1, 4, 16, 64)  # the k of --passk-eval-samples' pass@k (those ≤ its samples)
PASSK_STREAM = 3  # stream_seed's stream of the wide evaluation (0 sampling, 1 evaluation, 2 the loss's generator)

# Settings that cannot change a run's step-0 model or how it is evaluated: two runs whose configs
# differ only in these have the same step-0 wide evaluation, which `rlvr compare` computes once per
# seed (passk_base.json). Anything not listed counts, so a setting added later is never wrongly shared.
TRAINING_ONLY = frozenset((
    "out", "steps", "k", "prompts_per_step", "temperature", "lr", "warmup_steps", "weight_decay", "max_grad_norm",
    "max_bad_steps", "advantage", "loss_agg", "clip_low", "clip_high", "beta", "kl_estimator", "policy_loss",
    "ratio_level", "dual_clip", "positive_weight", "mask_truncated", "entropy_coef", "entropy_target",
    "entropy_coef_step", "entropy_coef_max", "clip_cov", "clip_cov_ratio", "clip_cov_low", "clip_cov_high", "kl_cov",
    "kl_cov_ratio", "kl_cov_coef", "top_entropy_tokens", "updates_per_step", "micro_batch_size",
    "gradient_checkpointing", "group_filter", "max_extra_rollouts", "downsample", "adaptive_k", "reward_shaping",
    "passk_k", "overlong_buffer", "overlong_penalty", "on_collapse", "collapse_ratio", "collapse_patience",
    "reward_collapse_ratio", "reward_collapse_patience", "max_rollbacks", "rollback_entropy_boost", "eval_every",
    "eval_show", "keep_best", "select_split", "early_stop", "checkpoint_every", "keep_checkpoints", "log",
    "mlflow_uri", "quiet", "force", "threads", "nproc", "dist_timeout", "is_correction", "is_cap",
    "drift_threshold", "drift_patience", "on_drift", "reward_workers", "reward_timeout", "max_reward_error_frac"))


def passk_fingerprint(cfg: TrainConfig) -> str:
    """What the step-0 wide evaluation depends on, hashed: every setting but TRAINING_ONLY's."""
    kept = {k: v for k, v in to_dict(cfg).items() if k not in TRAINING_ONLY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def passk_metrics(per_problem: list[dict], ks, seed: int) -> dict:
    """pass@k for each k of `ks` (unbiased estimator per problem, mean, bootstrap CI over problems)."""
    n, c = [p["n"] for p in per_problem], [p["correct"] for p in per_problem]
    return {f"pass@{k}": summarize_metric(pass_at_k_per_problem(n, c, k), kind="bootstrap", seed=seed) for k in ks}


class InTrainingEval:
    """Evaluates the run's policy on the same held-out problems every time (drawn once, and only
    for a run that evaluates) and writes the results to the run's logs and eval.json."""

    def __init__(self, cfg: TrainConfig, world: World, run: RunDir, task, pool=None, verifier: str = "task",
                 engine=None) -> None:
        """`pool`: the RewardPool of `verifier`, the run's evaluation verifier (--eval-reward, else
        --reward); the held-out samples are drawn with the run's --top-k/--top-p/--min-p, by the
        run's `engine` (rlvr.rollout.engines; default rlvr's own)."""
        self.cfg, self.world, self.run, self.task, self.verifier = cfg, world, run, task, verifier
        self.settings = dict(problems=cfg.eval_problems, samples=cfg.eval_samples, temperature=cfg.eval_temperature,
                             ks=[k for k in EVAL_KS if k <= cfg.eval_samples], max_new_tokens=cfg.max_new_tokens,
                             seed=stream_seed(cfg.seed, 0, 1), world=world, pool=pool, truncation=Truncation.of(cfg),
                             engine=engine)
        self.items = heldout_items(task, cfg.eval_problems) if cfg.eval_every or cfg.passk_eval_samples else None
        self.selection_items = validation_items(task, cfg.eval_problems, cfg.eval_problems) \
            if cfg.select_split == "validation" and cfg.eval_every else None

    def __call__(self, st: RunState, step: int, logs: RunLogs) -> dict:
        """Evaluates at `step` -> the eval/ metrics of its metrics.jsonl row."""
        cfg = self.cfg
        with distributed.decoding(st.policy, self.world):
            result = evaluate_policy(st.policy, self.task, items=self.items, show=cfg.eval_show, **self.settings)
        for sample in result.pop("samples", []):
            logs.samples.write({"step": step, **sample})
        flat = flat_eval_metrics(result)
        if st.baseline_eval is None:
            st.baseline_eval = result["per_problem"]
        if HEADLINE in result["metrics"]:
            gain = paired_bootstrap_gain(per_problem_values(st.baseline_eval, HEADLINE),
                                         per_problem_values(result["per_problem"], HEADLINE))
            flat[f"eval/{HEADLINE}_gain"] = gain["value"]
            flat[f"eval/{HEADLINE}_gain_ci_low"], flat[f"eval/{HEADLINE}_gain_ci_high"] = gain["ci"]
        eval_json = {"model": cfg.model, "task": cfg.task, "split": "heldout", "step": step, "verifier": self.verifier,
                     "engine": cfg.engine, "n_samples": cfg.eval_samples, "temperature": cfg.eval_temperature,
                     **sampling_record(Truncation.of(cfg)),
                     "n_problems": len(result["per_problem"]), **result}
        if self.world.main:
            write_text_atomic(self.run.root / "eval.json", json.dumps(eval_json) + "\n")
        logs.evals.write(eval_json)
        logs.events.write({"event": "eval", "step": step, "message": ", ".join(
            f"{name} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" for name, m in result["metrics"].items())})
        if cfg.keep_best != "none":
            if self.selection_items is None:
                selected = result
            else:
                with distributed.decoding(st.policy, self.world):
                    selected = evaluate_policy(st.policy, self.task, items=self.selection_items, **self.settings)
            flat.update(self.select_best(st, step, selected))
        return flat

    def passk(self, st: RunState, step: int, logs: RunLogs) -> None:
        """--passk-eval-samples: the wide evaluation at `step` (0 or the run's last) -> a passk.jsonl
        row. The same problems as every evaluation, N samples each, their own sampling seeds;
        pass@k for k in PASSK_KS ≤ N, with the per-problem counts (for paired differences). At step 0
        a `passk_base.json` holding this run's fingerprint (written by `rlvr compare` from another
        arm of the same seed, whose step 0 is the same model evaluated the same way) is used instead
        of evaluating again; a row already in passk.jsonl for `step` (a resumed run) is kept."""
        cfg, run = self.cfg, self.run
        if not cfg.passk_eval_samples or any(r.get("step") == step for r in read_jsonl(run.passk_file)):
            return
        fingerprint = passk_fingerprint(cfg)
        reused = read_json(run.passk_base_file) if step == 0 else None
        if reused is not None and reused.get("fingerprint") == fingerprint and reused.get("step") == 0:
            row = {**reused, "reused_from": reused.get("source", str(run.passk_base_file))}
        else:
            samples = cfg.passk_eval_samples
            ks = [k for k in PASSK_KS if k <= samples]
            seed = stream_seed(cfg.seed, 0, PASSK_STREAM)
            settings = {**self.settings, "samples": samples, "ks": [k for k in ks if k > 1] or [1], "seed": seed}
            with distributed.decoding(st.policy, self.world):
                result = evaluate_policy(st.policy, self.task, items=self.items, **settings)
            row = {"step": step, "fingerprint": fingerprint, "model": cfg.model, "task": cfg.task, "split": "heldout",
                   "verifier": self.verifier, "engine": cfg.engine, "n_samples": samples, "ks": ks,
                   "temperature": cfg.eval_temperature, "max_new_tokens": cfg.max_new_tokens,
                   **sampling_record(Truncation.of(cfg)), "n_problems": len(result["per_problem"]),
                   "metrics": passk_metrics(result["per_problem"], ks, seed),
                   "per_problem": [{k: p[k] for k in ("id", "n", "correct")} for p in result["per_problem"]]}
        logs.passk.write(row)
        m = row["metrics"]
        logs.events.write({"event": "passk_eval", "step": step, "message": (
            f"pass@k from {row['n_samples']} samples on {row['n_problems']} problems"
            f"{' (step 0 of ' + row['reused_from'] + ')' if 'reused_from' in row else ''}: " + ", ".join(
                f"{name} {v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for name, v in m.items()))})

    def select_best(self, st: RunState, step: int, result: dict) -> dict:
        """--keep-best and --early-stop: is this evaluation the best so far, and a significant gain?"""
        cfg = self.cfg
        metric = cfg.keep_best
        value, values = result["metrics"][metric]["value"], per_problem_values(result["per_problem"], metric)
        gain = None if st.best is None else paired_bootstrap_gain(st.best["values"], values)
        if st.best is None or value > st.best["value"]:
            st.best = {"step": step, "metric": metric, "value": value, "ci": result["metrics"][metric]["ci"],
                       "split": cfg.select_split, "values": values.tolist()}
            st.save_model(partial(self.run.save_best, best=st.best,
                                  extra={"trained_by": "rlvr train", "steps": step, "config": to_dict(cfg)}))
        significant = gain is None or gain["ci"][0] > 0
        st.evals_without_gain = 0 if significant and st.best["step"] == step else st.evals_without_gain + 1
        return {"eval/selected": value, "eval/best": st.best["value"], "eval/best_step": st.best["step"],
                "eval/evals_without_gain": st.evals_without_gain}

