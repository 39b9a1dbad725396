"""Build tiny random-weight HF model dirs using rlvr's tests/hf_models.py (read-only import)."""
import sys, time
sys.path.insert(0, "/work/main/tests")
from hf_models import make_hf_model_dir
base = "/work/vllm_probe/models"
specs = {
    # name: (arch, hidden, layers, heads, kv_heads)  -> head_dim = hidden/heads
    "llama_h32": ("llama", 32, 2, 4, 2),    # head_dim 8  (rlvr's test default)
    "qwen2_h32": ("qwen2", 32, 2, 4, 2),    # head_dim 8
    "llama_h64": ("llama", 64, 2, 4, 2),    # head_dim 16
    "qwen2_h64": ("qwen2", 64, 2, 4, 2),    # head_dim 16
    "llama_h128": ("llama", 128, 2, 4, 2),  # head_dim 32
    "qwen2_h128": ("qwen2", 128, 2, 4, 2),  # head_dim 32
    "llama_h256": ("llama", 256, 2, 4, 2),  # head_dim 64
    "qwen2_h256": ("qwen2", 256, 2, 4, 2),  # head_dim 64
}
for name, (arch, h, l, nh, kv) in specs.items():
    t = time.time()
    make_hf_model_dir(f"{base}/{name}", arch, seed=0, hidden=h, layers=l, heads=nh, kv_heads=kv)
    print(name, f"{time.time()-t:.2f}s")
