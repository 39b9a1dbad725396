"""Fresh bf16 engine on a model directory: mismatch/kl on mul prompts at T=0.7, K=8, 16 tokens."""
import sys, json
sys.path.insert(0, "/work/main/tests")
from rlvr.backends import load_policy
from rlvr.rollout.engines import EngineSettings, open_engine, trainer_view
from rlvr.rollout.strategies import group_seeds
from rlvr.algo.correction import mismatch_metrics
from rlvr.tasks import get_task
model = sys.argv[1]
pol = load_policy(model)
eng = open_engine(EngineSettings("vllm", engine_dtype="bfloat16"), model, pol, max_new_tokens=16, rows=64)
task = get_task("mul", seed=0)
out = []
for b in range(4):
    items = [task.item("train", 1000 + b * 8 + i) for i in range(8)]
    batch = eng.sample(pol, items, 8, max_new_tokens=16, temperature=0.7, seeds=group_seeds(b, range(8)))
    v = trainer_view(pol, batch, 0.7, None)
    out.append(mismatch_metrics(v.logprobs, v.engine_logprobs, v.completion_mask))
print("FRESH", model, json.dumps({k: sum(o[k] for o in out) / len(out) for k in out[0]}))
