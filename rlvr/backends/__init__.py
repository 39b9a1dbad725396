"""Policy backends: the built-in tiny transformer (`tiny.py`) behind one small interface.

A backend turns text into token ids and back, and runs a causal LM forward pass with an
optional KV cache. Sampling (`rlvr.rollout`) and the loss (`rlvr.losses`) only use that
interface, so the same step runs on the tiny model and on larger ones.
"""
from rlvr.backends.tiny import ByteTokenizer, TinyConfig, TinyLM, load_policy, save_policy

__all__ = ["ByteTokenizer", "TinyConfig", "TinyLM", "load_policy", "save_policy"]
