"""Shared fixtures: tests build their own tiny random-init models; nothing is downloaded."""
from __future__ import annotations

import pytest
import torch

from rlvr.backends.tiny import TinyConfig, TinyLM, TinyPolicy, save_policy


def make_model(seed: int = 0, d_model: int = 32, n_layer: int = 2, n_head: int = 2, max_seq_len: int = 48) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(TinyConfig(d_model=d_model, n_layer=n_layer, n_head=n_head, max_seq_len=max_seq_len))


def make_policy(seed: int = 0, **sizes) -> TinyPolicy:
    """A random-init tiny model behind the Policy interface, in eval mode."""
    return TinyPolicy(make_model(seed, **sizes).eval())


@pytest.fixture
def model_dir(tmp_path):
    """A saved random-init tiny model (loads like the shipped one or a run's final/)."""
    path = tmp_path / "model"
    save_policy(make_model(), path)
    return str(path)
