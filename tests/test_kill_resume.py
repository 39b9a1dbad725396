"""SIGKILL at random moments, checkpoint writes included: re-running the same command resumes,
and the finished run equals an uninterrupted one bit for bit (weights and metrics.jsonl minus perf/*)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr.train.checkpoint import SLOW_CHECKPOINT_ENV

REPO = Path(__file__).resolve().parent.parent
STEPS = 12
COMMAND = ["train", "--steps", str(STEPS), "--checkpoint-every", "1", "--prompts-per-step", "2", "--k", "4",
           "--eval-every", "0", "--threads", "1", "--quiet"]


def launch(out: Path, slow_checkpoint: bool = False, extra: tuple = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    if slow_checkpoint:
        env[SLOW_CHECKPOINT_ENV] = "0.3"
    return subprocess.Popen([sys.executable, "-m", "rlvr.cli", *COMMAND, *extra, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def steps_logged(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line.endswith("}"))


def wait_for(condition, process: subprocess.Popen) -> bool:
    """Polls until `condition()` holds (True) or the process has ended (False)."""
    while process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


def kill_at(process: subprocess.Popen, out: Path, moment: str, rng: random.Random) -> bool:
    """Kills the run at `moment`; False if it finished first."""
    if moment == "checkpoint":  # inside a checkpoint write: the temporary directory exists
        hit = wait_for(lambda: any(p.name.startswith(".tmp-") for p in (out / "checkpoints").glob("*")), process)
    elif moment == "startup":  # while importing, loading the model or starting reward workers
        time.sleep(rng.uniform(0.05, 1.5))
        hit = process.poll() is None
    else:  # between or inside steps: a random delay after the next step is logged
        target = steps_logged(out) + 1
        hit = wait_for(lambda: steps_logged(out) >= target, process)
        time.sleep(rng.uniform(0.0, 0.06))
        hit = hit and process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return hit


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_with_kills(tmp_path: Path, moments: list[str], seed: int, extra: tuple = ()) -> None:
    straight = tmp_path / "straight"
    assert launch(straight, extra=extra).wait() == 0
    killed = tmp_path / "killed"
    rng = random.Random(seed)
    kills = 0
    for moment in moments:
        process = launch(killed, slow_checkpoint=moment == "checkpoint", extra=extra)
        kills += kill_at(process, killed, moment, rng)
    final = launch(killed, extra=extra)
    assert final.wait() == 0, final.stderr.read().decode()
    assert kills == len(moments)  # every kill hit a live run
    assert rows(killed) == rows(straight)
    assert [r["step"] for r in rows(killed)] == list(range(1, STEPS + 1))
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(killed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    events = [json.loads(line)["event"] for line in (killed / "events.jsonl").read_text().splitlines()]
    assert "resume" in events and events[-1] == "done"
    assert not [p for p in killed.rglob(".tmp-*")]  # nothing half-written left behind


def test_sigkill_at_ten_random_moments_then_resume_is_exact(tmp_path):
    moments = ["startup", "step", "checkpoint", "step", "step", "checkpoint", "startup", "step", "checkpoint", "step"]
    run_with_kills(tmp_path, moments, seed=7)


def test_sigkill_then_resume_is_exact_on_a_transformers_model(tmp_path):
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    model = make_hf_model_dir(tmp_path / "model", arch="llama")
    run_with_kills(tmp_path, ["step", "checkpoint", "step"], seed=3,
                   extra=("--model", str(model), "--max-new-tokens", "6", "--reward", "shaped_rewards:digit_share"))


def test_sigkill_then_resume_is_exact_with_episodes(tmp_path):
    """Episodes of several turns (an OpenEnv text environment: every model turn an action): a
    killed run resumes to the same metrics and weights as an uninterrupted one."""
    pytest.importorskip("openenv")
    run_with_kills(tmp_path, ["step", "checkpoint", "step"], seed=5,
                   extra=("--env", "envs_openenv:CountToThree", "--max-turns", "3", "--max-new-tokens", "4"))
