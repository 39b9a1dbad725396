"""CLI smoke tests on tiny budgets: run directories parse, bad input exits 2 naming the field."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.cli import main

SMALL = ["--k", "4", "--prompts-per-step", "2", "--max-new-tokens", "6", "--quiet"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_writes_a_run_directory_that_parses(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", model_dir, "--steps", "3", "--out", str(out), "--eval-every", "2",
                 "--eval-problems", "6", "--eval-samples", "4", "--checkpoint-every", "2", *SMALL])
    assert code == 0
    assert "3 steps, K=4" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["k"] == 4 and "rlvr_version" in config
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward/mean", "reward/std", "reward/zero_signal_frac", "reward/errors", "entropy/mean",
                "entropy/ema", "entropy/retention", "diversity/answers", "loss/policy", "loss/entropy", "loss/kl",
                "clip/frac", "grad/norm", "control/entropy_coef", "perf/step_seconds", "perf/rollout_tokens_per_s",
                "perf/peak_memory_mib", "completion/mean_length"):
        assert key in rows[1], key
    for step_row in (rows[0], rows[2]):
        for key in ("eval/hm@4", "eval/hm@4_ci_low", "eval/hm@4_ci_high", "eval/hm@4_ranked", "eval/pass@1",
                    "eval/pass@1_greedy", "eval/n_problems"):
            assert key in step_row, key
    events = read_jsonl(out / "events.jsonl")
    assert [e["event"] for e in events] == ["model", "eval", "eval", "done"]
    assert events[0]["backend"] == "tiny" and events[0]["trainable_parameters"] == events[0]["parameters"] > 0
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "config.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    eval_json = json.loads((out / "eval.json").read_text())
    assert eval_json["n_problems"] == 6 and len(eval_json["per_problem"]) == 6


@pytest.mark.parametrize("args, field", [
    (["--k", "1"], "--k"),
    (["--lr", "-1"], "--lr"),
    (["--temperature", "0"], "--temperature"),
    (["--advantage", "ppo"], "--advantage"),
    (["--loss-agg", "mean"], "--loss-agg"),
    (["--task", "nope"], "--task"),
    (["--model", "/nonexistent/model"], "--model"),
    (["--max-new-tokens", "500"], "--max-new-tokens"),
    (["--reward", "nomodule_xyz:f"], "--reward"),
    (["--clip-low", "1.5"], "--clip-low"),
    (["--k", "4", "--downsample", "8"], "--downsample"),
    (["--reward-shaping", "passk", "--passk-k", "9"], "--passk-k"),
])
def test_bad_config_exits_2_naming_the_field(args, field, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any work


def test_sampling_strategies_are_plain_train_flags(model_dir, tmp_path):
    """What `rlvr compare --variant NAME="FLAGS"` passes on: every strategy is a train flag."""
    out = tmp_path / "run"
    code = main(["train", "--model", model_dir, "--steps", "2", "--out", str(out), "--group-filter",
                 "--downsample", "2", "--overlong-buffer", "2", *SMALL])
    assert code == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["group_filter"] is True and config["downsample"] == 2
    for row in read_jsonl(out / "metrics.jsonl"):
        assert row["sampling/effective_k"] in (0.0, 2.0) and row["sampling/generated"] >= 8
        for key in ("sampling/trained", "sampling/groups_dropped", "sampling/extra_seconds", "reward/overlong_penalty"):
            assert key in row, key


def test_bad_toml_value_and_unknown_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('k = "eight"\n')
    assert main(["train", "--config", str(bad)]) == 2
    assert "--k: expected a int" in capsys.readouterr().err
    bad.write_text("group_size = 8\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown setting 'group_size'" in capsys.readouterr().err


def test_toml_values_are_overridden_by_flags(model_dir, tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(f'model = "{model_dir}"\nk = 3\nsteps = 1\nprompts-per-step = 2\nquiet = true\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--k", "2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["k"] == 2 and config["prompts_per_step"] == 2


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--k", "eight"])
    assert exc.value.code == 2 and "--k" in capsys.readouterr().err


def test_help_shows_defaults_for_every_command():
    for command in ("train", "eval", "pretrain", "tasks"):
        result = subprocess.run([sys.executable, "-m", "rlvr.cli", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        if command == "train":
            assert "--prompts-per-step" in result.stdout and "(default: 8)" in result.stdout


def test_tasks_lists_builtin_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "arith" in out and "add2" in out and "mul" in out and "(default)" in out


def test_an_out_the_os_refuses_is_refused_before_any_work(capsys):
    """/proc passes the permission check for root, but nothing can be created there."""
    assert main(["train", "--out", "/proc/forbidden", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--out: cannot create or write '/proc/forbidden'" in err and "Traceback" not in err
