"""How often SmolLM2-135M-Instruct calls the calculator before any training, by prompt: the
system message that lists the tools (--env-system tools) or none, and 1 or 2 example
conversations (--env-examples). 8 training problems x 8 episodes each, temperature 0.7, at most
24 tokens a turn and 3 turns, rlvr's own sampler, seeds 0-7 (one per problem).

    .venv/bin/python docs/episodes_study/probe.py [TASK ...]     # default: mul22 mul

Prints one line per setting: episodes with a call, calls that were malformed, final answers right.
"""
from __future__ import annotations

import sys

import torch

from rlvr.backends import load_policy
from rlvr.envs import load_env
from rlvr.rollout.engines import RlvrEngine
from rlvr.rollout.episodes import EpisodeSettings, sample_episodes
from rlvr.tasks import get_task

SETTINGS = [("none", 1), ("tools", 1), ("none", 2), ("tools", 2)]


def main(tasks: list[str]) -> None:
    policy = load_policy("smollm2")
    policy.module.eval()
    for name in tasks:
        task = get_task(name)
        items = [task.item("train", i) for i in range(8)]
        for system, examples in SETTINGS:
            spec = load_env("calc", examples, system)
            with torch.no_grad():
                batch = sample_episodes(RlvrEngine(), policy, spec, items, 8,
                                        settings=EpisodeSettings(max_turns=3, max_new_tokens=24), temperature=0.7,
                                        seeds=list(range(8)))
            calls = sum(e["tool_calls"] > 0 for e in batch.episodes)
            errors = sum(e["tool_errors"] for e in batch.episodes)
            right = sum(task.score(text, items[row // 8]) for row, text in enumerate(batch.texts))
            print(f"{name:6} --env-system {system:5} --env-examples {examples}: calls in {calls}/64 episodes, "
                  f"{errors} malformed, final answer right in {int(right)}/64", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["mul22", "mul"])
