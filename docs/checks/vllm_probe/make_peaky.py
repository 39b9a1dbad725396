"""Tiny models whose next-token distribution is peaked (random init is ~uniform over the vocab):
the final RMSNorm weight is multiplied by SCALE, which multiplies every logit by SCALE."""
import sys, torch, transformers
sys.path.insert(0, "/work/main/tests")
from hf_models import make_hf_model_dir
SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 12.0
for arch in ["llama", "qwen2"]:
    d = f"/work/vllm_probe/models/{arch}_h128_peaky"
    make_hf_model_dir(d, arch, seed=0, hidden=128, layers=2, heads=4, kv_heads=2)  # head_dim 32
    m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():
        m.model.norm.weight.mul_(SCALE)
    m.save_pretrained(d)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    ids = torch.tensor([tok.encode("What is 12 + 30? The answer is 42. You are a helpful assistant.")])
    with torch.no_grad():
        lp = torch.log_softmax(m(ids).logits[0], -1)
    ent = -(lp.exp() * lp).sum(-1)
    print(d, "tied" if m.config.tie_word_embeddings else "untied", f"scale {SCALE} mean entropy {ent.mean():.2f} nats (uniform {torch.log(torch.tensor(float(lp.shape[-1]))):.2f}), max p {lp.exp().max(-1).values.mean():.2f}")
