"""The evaluations inside a training run: held-out HM@k / pass@k at step 0 and every
--eval-every steps, the paired gain over step 0, eval.json, and --keep-best / --early-stop's
choice of the best evaluation (on the held-out problems or a disjoint validation slice)."""
from __future__ import annotations

import json
from functools import partial

from rlvr import distributed
from rlvr.algo.stats import paired_bootstrap_gain, per_problem_values
from rlvr.config import TrainConfig, to_dict
from rlvr.distributed import World
from rlvr.eval.runner import (EVAL_KS, HEADLINE, evaluate_policy, flat_eval_metrics, heldout_items, sampling_record,
                              validation_items)
from rlvr.train.checkpoint import write_text_atomic
from rlvr.train.rundir import RunDir, RunLogs
from rlvr.train.state import RunState, stream_seed
from rlvr.types import Truncation


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
        self.items = heldout_items(task, cfg.eval_problems) if cfg.eval_every else None
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

