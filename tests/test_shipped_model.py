"""The shipped built-in model: it loads, and RL has something to learn with it."""
from rlvr.backends.tiny import load_policy
from rlvr.train.pretrain import heldout_accuracy
from rlvr.tasks import DEFAULT_TASK, get_task


def test_shipped_model_greedy_accuracy_is_in_the_learnable_range():
    model = load_policy("tiny").eval()
    task = get_task(DEFAULT_TASK, seed=0)
    greedy = heldout_accuracy(model, task, problems=300, temperature=0.0, seed=0)
    sampled = heldout_accuracy(model, task, problems=300, temperature=1.0, seed=0)
    assert 0.15 <= greedy <= 0.60, greedy
    assert sampled < greedy  # temperature-1 samples are noisier than greedy answers: RL can sharpen them
