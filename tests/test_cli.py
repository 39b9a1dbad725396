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


GROUPED_COMMANDS = {"train": ("rlvr.config", "TrainConfig"), "eval": ("rlvr.cli", "EvalConfig"),
                    "compare": ("rlvr.study.compare", "CompareConfig"), "plan": ("rlvr.study.plan", "PlanConfig")}


def command_parsers() -> dict:
    import argparse

    from rlvr.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_of_train_eval_compare_and_plan_is_in_a_titled_help_group():
    """--help groups options as the docs do; a new config field that no HELP_GROUPS table names
    fails here with the fix."""
    from rlvr.config import HELP_GROUP_DOCS, help_group_title

    titles = {help_group_title(name): name for name in HELP_GROUP_DOCS}
    parsers = command_parsers()
    for command, (module, cls) in GROUPED_COMMANDS.items():
        parser = parsers[command]
        seen = []
        for group in parser._action_groups:
            for action in group._group_actions:
                if "-h" in action.option_strings:
                    continue
                flag = action.option_strings[0]
                assert group.title in titles, (
                    f"{flag} of `rlvr {command}` is in the help group {group.title!r}, not one of the titled groups: "
                    f"add {action.dest!r} to {cls}.HELP_GROUPS ({module}) under the group whose doc page explains it "
                    f"(the groups and their pages: rlvr.config.HELP_GROUP_DOCS)")
                seen.append(flag)
        assert len(seen) == len(set(seen)), command
        assert "--config" in seen, command
        if command == "train":
            used = {group.title for group in parser._action_groups if group.title in titles and group._group_actions}
            assert len(used) >= 8, used
            assert "large-K strategies (docs/sampling.md)" in parser.format_help()


def test_each_help_group_names_doc_pages_that_exist_and_each_table_names_real_fields():
    import importlib

    from rlvr.config import HELP_GROUP_DOCS, config_fields

    root = Path(__file__).resolve().parents[1]
    for name, pages in HELP_GROUP_DOCS.items():
        for page in pages.split(", "):
            path, _, anchor = page.partition("#")
            assert (root / path).is_file(), (name, page)
            if anchor:
                headings = [line.lstrip("#").strip().lower() for line in (root / path).read_text().splitlines()
                            if line.startswith("#")]
                slugs = {"".join(c for c in h.replace(" ", "-") if c.isalnum() or c in "-_") for h in headings}
                assert anchor in slugs, (name, page, sorted(slugs))
    for module, cls_name in GROUPED_COMMANDS.values():
        cls = getattr(importlib.import_module(module), cls_name)
        named = [field for fields in cls.HELP_GROUPS.values() for field in fields]
        assert len(named) == len(set(named)), f"{cls_name}.HELP_GROUPS names a field twice"
        assert set(cls.HELP_GROUPS) <= set(HELP_GROUP_DOCS), set(cls.HELP_GROUPS) - set(HELP_GROUP_DOCS)
        assert set(named) == {f.name for f in config_fields(cls)}, (cls_name, set(named) ^ {f.name for f in config_fields(cls)})


def test_a_field_missing_from_help_groups_is_still_shown_under_a_group_that_says_so():
    import argparse
    from dataclasses import dataclass

    from rlvr.config import UNGROUPED, add_fields, opt

    @dataclass
    class Config:
        seed: int = opt(0, "seed")
        new_option: float = opt(0.5, "added without a group")
        HELP_GROUPS = {"run and logging": ("seed",)}

    parser = argparse.ArgumentParser()
    add_fields(parser, Config)
    text = parser.format_help()
    shown = text[text.index(f"{UNGROUPED}:"):]
    assert "--new-option X" in shown and "added without a group (default: 0.5)" in shown
    assert text.index("run and logging (docs/") < text.index(UNGROUPED)


def test_tasks_lists_builtin_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "arith" in out and "add2" in out and "mul" in out and "(default)" in out


def test_an_out_the_os_refuses_is_refused_before_any_work(capsys):
    """/proc passes the permission check for root, but nothing can be created there."""
    assert main(["train", "--out", "/proc/forbidden", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--out: cannot create or write '/proc/forbidden'" in err and "Traceback" not in err
