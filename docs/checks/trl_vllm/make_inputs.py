"""Writes the tiny random Qwen2 (vs_trl's `tiny` model) and the add2 work items vs_trl feeds TRL.
Run with rlvr's venv (needs rlvr for the prompts):  /work/main/.venv/bin/python make_inputs.py OUTDIR [smollm2]"""
import json, sys
from pathlib import Path
sys.path.insert(0, "/work/main/benchmarks")
import vs_trl  # noqa: E402  (the benchmark's own helpers)

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
if len(sys.argv) > 2 and sys.argv[2] == "smollm2":
    from rlvr.backends import resolve
    model_dir = Path(resolve("smollm2").path); name = "smollm2"
else:
    model_dir = vs_trl.make_tiny_model(out / "tiny-qwen2"); name = "tiny"
items = vs_trl.work_items(model_dir, 64)
(out / f"items_{name}.json").write_text(json.dumps(items))
print(model_dir, len(items), items[0])
