"""The core install stays light: with transformers and peft unimportable, the built-in model runs
every command, and asking for a Hugging Face model says what to install (exit 2)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# None in sys.modules makes `import transformers` raise ImportError, as on a core-only install.
BLOCK = "import sys; sys.modules.update(dict.fromkeys(('transformers', 'peft', 'gguf', 'accelerate'))); "


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    code = BLOCK + f"from rlvr.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_built_in_model_trains_and_evaluates_without_transformers(tmp_path):
    train = run_cli(tmp_path, "train", "--steps", "2", "--k", "2", "--prompts-per-step", "2", "--out", "run",
                    "--quiet", "--threads", "1")
    assert train.returncode == 0, train.stderr
    evaluated = run_cli(tmp_path, "eval", "--run", "run", "--problems", "4", "--samples", "2", "--k", "1", "2",
                        "--out", "eval.json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert (tmp_path / "eval.json").is_file()


def test_a_hugging_face_model_without_transformers_names_the_install(tmp_path):
    for model in ("smollm2", str(tmp_path / "model.gguf")):
        (tmp_path / "model.gguf").write_bytes(b"GGUF")
        result = run_cli(tmp_path, "train", "--model", model, "--out", "run")
        assert result.returncode == 2 and 'pip install -e ".[hf]"' in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
