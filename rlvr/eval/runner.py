"""The evaluation runner: sample a policy on a task's held-out problems and score them
(rlvr eval, and the evaluations inside a training run). The numbers it reports are computed by
rlvr/algo/stats.py from the per-problem counts it collects (definitions in TERMS.md).
"""
from __future__ import annotations

from typing import Sequence

from rlvr.algo.stats import _check_counts, hm_at_k_ranked, metrics_from_per_problem
from rlvr.distributed import SINGLE
from rlvr.rewards.pool import RewardPool
from rlvr.rewards.verifiers import load_verifier
from rlvr.rollout.engines import RlvrEngine
from rlvr.rollout.strategies import group_seeds
from rlvr.types import Truncation

EVAL_KS = (1, 4, 8)  # the k of pass@k / hm@k an evaluation inside a training run reports (each ≤ its samples)
HEADLINE = "hm@4"  # the metric the progress bar shows and gains are reported for

# heldout_items reads at most this many held-out draws per wanted problem before it concludes
# that the split has no more distinct problems (mul: all 104 are found in ~600 draws).
DISTINCT_DRAWS = 50


def evaluate_policy(
    policy,
    task,
    *,
    problems: int,
    samples: int,
    ks: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    seed: int,
    items: list[dict] | None = None,
    show: int = 0,
    world=None,
    pool: RewardPool | None = None,
    truncation: Truncation | None = None,
    engine=None,
) -> dict:
    """HM@k / pass@k of `policy` (rlvr.backends.Policy) on the first `problems` distinct held-out
    problems of `task` (`heldout_items`: all of them when the split has fewer).

    Each problem's samples come from its own torch.Generator, seeded by (`seed`, the problem's
    index), never the global RNG: evaluating inside a training run does not change what the run
    samples afterwards, and a problem's samples do not depend on which problems share its decoding
    batch. All `samples` completions of many problems are decoded as one batch, like training
    rollouts. `world` (rlvr.distributed.World): each rank evaluates a contiguous shard of the
    problems and the per-problem records of all ranks are gathered, in problem order, before any
    metric or interval is computed, so the result does not depend on the number of ranks.
    Returns {"metrics": {name: {"value", "ci", "n"}}, "per_problem": [...]} as in eval.json.
    `items` replaces the held-out problems (e.g. a validation slice). `show` > 0 adds "samples":
    the greedy and the first sampled completion of the first `show` problems, with the answer
    read from each and its score, so a person can see what the numbers are made of.

    The verifier: `pool` (a RewardPool of one verifier, e.g. the run's --reward: then a code
    task's pass@k is its programs' test results), else the task's own verifier (`--reward task`:
    code_exec for a task of code problems) in this process. A completion is correct when it
    scores 1; a call that fails (raises, times out, crashes) counts as wrong and is counted in
    the record's "verifier_failures". `truncation`: sample from the top-k/top-p/min-p support,
    as the run trains. `engine` (rlvr.rollout.engines): what samples, rlvr's own decode loop by
    default; with vLLM the ranking log-probs of hm@k_ranked are the engine's.
    """
    engine = engine or RlvrEngine()
    pool = pool if pool is not None else RewardPool.in_process(load_verifier("task", task))
    world = world or SINGLE
    ks = sorted(set(int(k) for k in ks))
    for k in ks:
        _check_counts(samples, 0, k)
    was_training = policy.module.training
    policy.module.eval()
    items = items if items is not None else heldout_items(task, problems)
    mine = world.shard(len(items))
    per_problem, shown = [], []
    chunk = max(1, policy.decode_batch_rows // samples)
    for start in range(mine.start, mine.stop, chunk):
        indices = range(start, min(start + chunk, mine.stop))
        group = items[indices.start : indices.stop]
        seeds = group_seeds(seed, indices)
        sampled = engine.sample(policy, group, samples, max_new_tokens=max_new_tokens,
                                temperature=temperature, seeds=seeds, truncation=truncation)
        greedy = engine.sample(policy, group, 1, max_new_tokens=max_new_tokens, temperature=0.0, seeds=seeds)
        seq_logprobs = sampled.logprobs.sum(dim=1).tolist()  # (N,) log-prob of each whole completion
        # Every completion of the chunk in one call, so a pool's workers judge them in parallel.
        outcomes = pool.score(sampled.texts + greedy.texts,
                              [item for item in group for _ in range(samples)] + list(group))
        scores = [o.value if o.kind is None else 0.0 for o in outcomes]
        for g, item in enumerate(group):
            rows = range(g * samples, (g + 1) * samples)
            texts = [sampled.texts[i] for i in rows]
            correct = [scores[i] >= 1.0 for i in rows]
            answers = [task.extract_answer(t) for t in texts]
            greedy_row = len(sampled.texts) + g
            record = {
                "id": item["id"], "level": item.get("level", 0), "n": samples, "correct": int(sum(correct)),
                "greedy_correct": bool(scores[greedy_row] >= 1.0),
            }
            failed = sum(outcomes[i].kind is not None for i in [*rows, greedy_row])
            if failed:
                record["verifier_failures"] = failed
            for k in ks:
                record[f"hm@{k}_ranked"] = hm_at_k_ranked(answers, correct, [seq_logprobs[i] for i in rows], k)
            per_problem.append(record)
            if len(shown) < 2 * show:  # two completions per shown problem
                for kind, batch, row, at in (("greedy", greedy, greedy_row, g), ("sampled", sampled, rows[0], rows[0])):
                    text = batch.texts[at]
                    sample = {"id": item["id"], "question": policy.prompt_text(item), "answer": item["answer"],
                              "kind": kind, "completion": text, "extracted": task.extract_answer(text),
                              "score": scores[row]}
                    if batch.episodes is not None:  # the whole episode, each turn marked; its final turn is scored
                        sample["completion"] = transcript(batch.episodes[at])
                        sample["episode"] = batch.episodes[at]
                    shown.append(sample)
    policy.module.train(was_training)
    if world.parallel:
        every = world.gather((per_problem, shown), "gathering the evaluation's per-problem results")
        per_problem = [record for part, _ in every for record in part]
        shown = [sample for _, part in every for sample in part][: 2 * show]
    result = {"metrics": metrics_from_per_problem(per_problem, ks, seed), "per_problem": per_problem}
    if show:
        result["samples"] = shown
    return result


def transcript(episode: dict) -> str:
    """An episode's turns as one text, each turn on its own line(s) after its role in brackets."""
    return "\n".join(f"[{turn['role']}] {turn['text']}" for turn in episode["turns"])


def heldout_items(task, count: int, skip: int = 0) -> list[dict]:
    """Distinct held-out problems, by problem key, in the order the task's held-out stream first
    shows them: the (`skip`+1)-th to the (`skip`+`count`)-th. A stream draws problems
    independently, so it repeats some (200 draws of `arith` hold ~190 distinct problems, of `mul`
    ~80): an evaluation of n problems measures n different ones. A split with fewer distinct
    problems than asked yields all it has (`mul` has 104); the stream is read until
    `DISTINCT_DRAWS` draws per wanted problem pass without completing the list."""
    key = lambda item: item.get("key", item["prompt"])  # noqa: E731
    wanted, seen, chosen = skip + count, set(), []
    index = 0
    while len(seen) < wanted and index < DISTINCT_DRAWS * wanted:
        item = task.item("heldout", index)
        if key(item) not in seen:
            seen.add(key(item))
            if len(seen) > skip:
                chosen.append(item)
        index += 1
    return chosen


def validation_items(task, evaluation_problems: int, count: int) -> list[dict]:
    """`count` held-out problems disjoint from the `evaluation_problems` evaluated ones (the
    reported ones): where --keep-best and --early-stop measure with --select-split validation, so
    the reported numbers are not the ones the best checkpoint was chosen on. ValueError when the
    task's held-out split has too few distinct problems."""
    chosen = heldout_items(task, count, skip=evaluation_problems)
    if len(chosen) < count:
        raise ValueError(f"the task's held-out split has fewer than {evaluation_problems + count} distinct problems, "
                         f"so no validation slice of {count} is disjoint from the {evaluation_problems} evaluated ones; "
                         "lower --eval-problems or use --select-split heldout")
    return chosen


def sampling_record(truncation: Truncation) -> dict:
    """eval.json's record of a truncated sampling distribution (nothing when there is none)."""
    if not truncation.active:
        return {}
    return {"top_k": truncation.top_k, "top_p": truncation.top_p, "min_p": truncation.min_p}


def flat_eval_metrics(result: dict) -> dict[str, float]:
    """eval/<name>, eval/<name>_ci_low, eval/<name>_ci_high and eval/n_problems for metrics.jsonl."""
    flat: dict[str, float] = {}
    for name, m in result["metrics"].items():
        flat[f"eval/{name}"] = m["value"]
        flat[f"eval/{name}_ci_low"], flat[f"eval/{name}_ci_high"] = m["ci"]
    flat["eval/n_problems"] = len(result["per_problem"])
    return flat
