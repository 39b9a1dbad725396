"""One training run with the update packed (rlvr's default) or per-row (the computation before the
packed forward), to check that packing leaves results unchanged up to float rounding.

    python benchmarks/update_paths.py packed|per-row OUT [rlvr train options...]

Runs `rlvr train ... --out OUT --force --quiet`; with `per-row` the Scorer is forced to one forward
per sequence over prompt + completion (rlvr.rollout.forward.Scorer(pack=False)) and micro-batches are
planned for it. Compare the two runs' metrics.jsonl (docs/performance.md, "Results unchanged").
"""
import sys


def main() -> int:
    mode, out, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode not in ("packed", "per-row"):
        raise SystemExit(__doc__)
    if mode == "per-row":
        import rlvr.rollout.forward as forward
        import rlvr.train.step as step

        original, plan = forward.Scorer.__init__, step.micro_batches

        def per_row(self, policy, temperature, pack=True):
            original(self, policy, temperature, pack=False)

        forward.Scorer.__init__ = per_row
        step.micro_batches = lambda batch, rows, budget, packed=True: plan(batch, rows, budget, False)
    from rlvr.cli import main as rlvr_main

    return rlvr_main(["train", *args, "--out", out, "--force", "--quiet"])


if __name__ == "__main__":
    sys.exit(main())
