"""The reward wing: verifiers, the worker processes that call them, and the checkers inside.

One entry point for the rest of rlvr:
  * `load_verifier(spec, task)`: a verifier by name (`task`, `format`, `code_exec`, `math_verify`)
    or `module:function` (rlvr/rewards/verifiers.py, the registry);
  * `open_pool(spec, ...)`: a `RewardPool` that calls it in worker processes with a per-call
    timeout, so a hang or a crash costs one reward (rlvr/rewards/pool.py), or a `WeightedPool` of
    several (`--reward a:w,b:w`, each in its own pool); `rlvr.rewards.scoring.score_batch` turns
    a batch of completions into the (B, K) reward tensor with the failures counted;
  * `check_reward(spec, task)`: the pre-run check that each verifier exists and suits the task.

Inside: `math_answers` (math-verify, numbers and LaTeX) and `code/` (the code_exec verifier: the
sandbox, the judge and the wire between them). This package's modules import no torch: the
reward workers import them, and start in well under a second.
"""
from __future__ import annotations

from rlvr.config import ConfigError
from rlvr.rewards.pool import RewardFailure, RewardPool, WeightedPool, WorkerStartError, open_pool
from rlvr.rewards.verifiers import CRASH, TIMEOUT, load_verifier, needs_task, parse_reward
from rlvr.tasks.code_items import may_hold_code

__all__ = ["CRASH", "TIMEOUT", "RewardFailure", "RewardPool", "WeightedPool", "WorkerStartError", "check_reward",
           "evaluation_verifier", "load_verifier", "needs_task", "open_pool", "parse_reward"]


def evaluation_verifier(reward: str, eval_reward: str = "") -> str:
    """The one verifier an evaluation scores with: `eval_reward` when given, else `reward`; of a
    weighted mix (task:0.8,format:0.2), its component of largest weight (the first of equals),
    the correctness check a format or style term is added to."""
    if eval_reward:
        return eval_reward
    components = parse_reward(reward)
    if components is None:
        return reward
    return max(components, key=lambda component: component[1])[0]


def check_reward(reward: str, task: str) -> None:
    """The verifier (each of a weighted mix's) must be known or importable; code_exec needs tasks
    whose answers are tests."""
    try:
        components = parse_reward(reward)
    except ValueError as err:
        raise ConfigError("reward", str(err)) from None
    for name, _ in components or [(reward, 1.0)]:
        _check_verifier(name, task)


def _check_verifier(reward: str, task: str) -> None:
    if reward == "code_exec" and not may_hold_code(task):
        raise ConfigError("reward", "code_exec judges each completion as a program; use it with --task humaneval, "
                                    "or a jsonl:<path> or hf:<path> task whose items hold HumanEval's \"test\" and "
                                    "\"entry_point\", assert-style tests in \"answer\" or stdin/stdout pairs in "
                                    "\"tests\" (docs/data.md, docs/reliability.md)")
    if needs_task(reward):
        return
    try:
        load_verifier(reward)
    except ValueError as err:
        raise ConfigError("reward", str(err)) from None
