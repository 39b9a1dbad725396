"""`rlvr compare` and `rlvr report`: arm planning, a real 2-arm compare, resume after a kill,
failed arms, and the verdict rules on hand-made run directories."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from made_runs import write_run
from rlvr.cli import main
from rlvr.study.compare import CompareConfig, plan_runs, run_compare
from rlvr.config import ConfigError
from rlvr.study.report import build_report, to_html

SUMMARY_KEYS = {"model", "task", "match", "steps", "seeds", "arms", "verdicts", "reach", "runs"}
ARM_KEYS = {"name", "k", "variant", "hm@4_gain_at_100", "entropy_retention_at_100", "entropy_retention_final",
            "entropy_retention_last_step",
            "collapse_step", "step_seconds_median", "peak_memory_mib", "step_time_ratio", "memory_ratio",
            "reward_collapse_step", "best_step", "best_value", "step_time_ratio_ci", "step_memory_ratio_ci",
            "hm@4_change_100_to_last", "passk", "seeds", "settings", "vs_plain_k16", "grad_noise"}
SMALL = ["--steps", "6", "--seeds", "1", "--eval-every", "3", "--eval-problems", "8", "--eval-samples", "4",
         "--prompts-per-step", "2", "--max-new-tokens", "6", "--checkpoint-every", "2"]


def env_with_repo() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------------------- planning

def test_plan_match_samples_halves_the_prompts_and_lr_scaling_follows_samples(tmp_path):
    cc = CompareConfig(k=[8, 16], variant=[], seeds=2, steps=5, out=str(tmp_path / "c"), match="samples",
                       lr_scaling="linear")
    plans = plan_runs(cc, {"prompts_per_step": 8, "lr": 1e-4})
    by_arm = {p.arm: p.config for p in plans if p.config.seed == 1}
    assert [p.config.seed for p in plans] == [0, 1, 0, 1]
    assert by_arm["k8"].prompts_per_step == 8 and by_arm["k16"].prompts_per_step == 4
    assert by_arm["k16"].lr == pytest.approx(1e-4)  # same samples per step: nothing to scale
    cc = CompareConfig(k=[8, 16], variant=[], seeds=1, out=str(tmp_path / "c"), lr_scaling="sqrt")
    plans = plan_runs(cc, {"lr": 1e-4})
    assert plans[1].config.lr == pytest.approx(1e-4 * math.sqrt(2)) and plans[0].config.lr == pytest.approx(1e-4)
    assert plans[1].config.out == str(tmp_path / "c" / "k16" / "seed0")


def test_a_run_restored_from_its_light_files_counts_as_finished_only_with_its_done_event(tmp_path):
    from rlvr.config import to_dict
    from rlvr.study.compare import is_finished

    plan = plan_runs(CompareConfig(k=[8], variant=[], seeds=1, steps=5, out=str(tmp_path / "c")), {})[0]
    plan.dir.mkdir(parents=True)
    (plan.dir / "config.json").write_text(json.dumps({"config": to_dict(plan.config)}))
    events = plan.dir / "events.jsonl"
    events.write_text(json.dumps({"event": "model", "step": 0}) + "\n")
    assert not is_finished(plan)  # killed mid-run: no final/, no done
    events.write_text(events.read_text() + json.dumps({"event": "done", "step": 5}) + "\n")
    assert is_finished(plan)  # a study committed without weights: light files say it ended
    other = plan_runs(CompareConfig(k=[8], variant=[], seeds=1, steps=5, out=str(tmp_path / "c")), {"lr": 3e-4})[0]
    assert not is_finished(other)  # the same directory, another run's config: not this run
    longer = plan_runs(CompareConfig(k=[8], variant=[], seeds=1, steps=9, out=str(tmp_path / "c")), {})[0]
    assert not is_finished(longer)  # --steps 9 extends it: a run with weights resumes and trains on ...
    with pytest.raises(ConfigError, match="ended at step 5 without its weights.*--force"):
        run_compare(CompareConfig(k=[8], variant=[], seeds=1, steps=9, out=str(tmp_path / "c")), {})
    assert events.read_text().count("done") == 1  # ... this one has none: refused, its files kept


def test_plan_variant_starts_from_the_first_arm_and_shares_everything_else(tmp_path):
    cc = CompareConfig(k=[4, 8], variant=["ent=--entropy-coef 0.01", "big=--k 16 --entropy-target 1.2"], seeds=1,
                       steps=7, out=str(tmp_path / "c"))
    plans = {p.arm: p.config for p in plan_runs(cc, {"temperature": 0.9})}
    assert list(plans) == ["k4", "k8", "ent", "big"]
    assert plans["ent"].k == 4 and plans["ent"].entropy_coef == 0.01 and plans["big"].k == 16
    assert all(c.temperature == 0.9 and c.steps == 7 and c.eval_every == 25 for c in plans.values())


def test_a_w_reinforce_variant_is_planned_as_an_entropy_control(tmp_path):
    """`--variant "nsr=--k 16 --positive-weight 0.1"` (issue 26): the arm trains with λ = 0.1 and
    the report's verdict (e) takes it as K=16's entropy control; plain K=16 is not one."""
    from rlvr.study.report.runs import entropy_controls, has_entropy_control
    from rlvr.config import to_dict

    cc = CompareConfig(k=[8, 16], variant=["nsr=--k 16 --positive-weight 0.1"], seeds=1, steps=5,
                       out=str(tmp_path / "c"))
    plans = {p.arm: p.config for p in plan_runs(cc, {})}
    assert plans["nsr"].k == 16 and plans["nsr"].positive_weight == 0.1 and plans["k16"].positive_weight == 1.0
    assert entropy_controls(to_dict(plans["nsr"])) == ["positive_weight=0.1"]
    assert not has_entropy_control(to_dict(plans["k16"]))


@pytest.mark.parametrize("variant, needle", [
    (["bad flags=--k 4"], "NAME="), (["x=--no-such-flag 3"], "unrecognized"), (["x=--k two"], "invalid int"),
    (["x=--seed 3"], "--seed must be the same"), (["k8=--k 8"], "two arms are named 'k8'"),
    (["x=--k 1"], "in arm x"),
])
def test_plan_refuses_a_bad_variant_naming_it(tmp_path, variant, needle):
    cc = CompareConfig(k=[8], variant=variant, out=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="--variant|--k") as err:
        plan_runs(cc, {})
    assert needle in str(err.value)


def test_compare_refuses_a_bad_setting_before_any_run(tmp_path, capsys):
    assert main(["compare", "--match", "both", "--out", str(tmp_path / "c")]) == 2
    assert "--match: must be prompts or samples" in capsys.readouterr().err
    assert main(["compare", "--k", "8", "12", "--match", "samples", "--out", str(tmp_path / "c")]) == 2
    assert "cannot be split into groups of K=12" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------- end to end

def test_two_arm_compare_writes_the_report_and_rlvr_report_rebuilds_it(model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--model", model_dir, "--k", "4", "8", "--variant", "--out", str(out), "--jobs", "2", *SMALL])
    assert code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["match"] == "prompts" and summary["steps"] == 6 and summary["seeds"] == 1
    assert [a["name"] for a in summary["arms"]] == ["k4", "k8"] and [a["k"] for a in summary["arms"]] == [4, 8]
    for arm in summary["arms"]:
        assert set(arm) == ARM_KEYS
        assert arm["hm@4_gain_at_100"] == {"value": None, "ci": None}  # 6 steps: no evaluation at step 100
        assert 0 < arm["entropy_retention_final"] < 3 and arm["step_seconds_median"] > 0 and arm["peak_memory_mib"] > 0
    assert summary["arms"][0]["step_time_ratio"] == 1.0 and summary["arms"][0]["memory_ratio"] == 1.0
    assert [v["claim"][:3] for v in summary["verdicts"]] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)"]
    assert all(v["verdict"] in ("supported", "refuted", "inconclusive", "not measured") and v["evidence"]
               for v in summary["verdicts"])
    assert all(arm["grad_noise"]["steps"] == 6 for arm in summary["arms"])  # every step measured its noise
    plots = sorted((out / "plots").glob("*.png"))
    assert len(plots) >= 6
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in plots)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(plots) and "src=\"plots/" not in html
    md = (out / "report.md").read_text()
    assert "| k4 | 4 |" in md and "matched by **prompts**" in md and "rlvr compare --model" in md
    assert "Runs went 2 at a time" in md
    # every run is a normal run directory, tagged with its arm
    assert json.loads((out / "k8" / "seed0" / "arm.json").read_text())["arm"] == "k8"
    assert (out / "k8" / "seed0" / "final" / "model.safetensors").is_file()

    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text()) == summary
    assert main(["report", str(out / "k4" / "seed0"), str(out / "k8" / "seed0"), "--out", str(tmp_path / "runs")]) == 0
    assert json.loads((tmp_path / "runs" / "summary.json").read_text()) == summary


def test_killed_compare_resumes_without_redoing_finished_runs(model_dir, tmp_path):
    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "rlvr.cli", "compare", "--model", model_dir, "--k", "4", "8", "--variant",
            "--out", str(out), *SMALL, "--steps", "24", "--eval-every", "12"]
    proc = subprocess.Popen(argv, env=env_with_repo(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    second = out / "k8" / "seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill while the second arm is mid-way
        if second.is_file() and len(second.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_model = out / "k4" / "seed0" / "final" / "model.safetensors"
    assert first_model.is_file() and not (out / "k8" / "seed0" / "final").exists()
    stamp = first_model.stat().st_mtime_ns
    first_log = (out / "k4" / "seed0" / "train.log").read_text()

    done = subprocess.run(argv, env=env_with_repo(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert first_model.stat().st_mtime_ns == stamp  # not retrained
    assert (out / "k4" / "seed0" / "train.log").read_text() == first_log
    rows = [json.loads(line) for line in second.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 25))  # resumed from its checkpoint, no gap, no repeat
    events = [json.loads(line)["event"] for line in (out / "k8" / "seed0" / "events.jsonl").read_text().splitlines()]
    assert "resume" in events
    assert json.loads((out / "summary.json").read_text())["arms"][1]["name"] == "k8"


def test_a_failed_run_is_reported_and_the_others_finish(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "cmp"
    code = main(["compare", "--model", model_dir, "--k", "4", "--variant", f"bad=--model {broken}",
                 "pods=--k 8 --downsample 4 --group-filter", "--out", str(out), *SMALL])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad seed 0 FAILED" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in summary["arms"]] == ["k4", "pods"]
    assert summary["arms"][1]["variant"] == "--k 8 --downsample 4 --group-filter" and summary["arms"][1]["k"] == 8
    # the effective settings list the variant and what it really generated and trained per step
    pods_row = next(line for line in (out / "report.md").read_text().splitlines()
                    if line.startswith("| pods | `--k 8 --downsample 4 --group-filter` | 8 | 2 |"))
    generated, trained = (float(x) for x in pods_row.split(" | ")[4].split(" / "))
    assert generated >= 16 and trained <= generated
    assert "bad seed 0" in (out / "report.md").read_text()
    assert json.loads((out / "bad" / "seed0" / "arm.json").read_text())["failed"] is True


# ---------------------------------------------------------------------------------------- verdict rules

def test_verdicts_follow_their_documented_rules(tmp_path):
    steps = 150
    steady = [1.0] * steps
    decaying = list(np.linspace(1.0, 0.1, steps))
    for seed in (0, 1):
        # K=8: every problem goes from 0/4 to 4/4 correct on half the problems: +50 points
        write_run(tmp_path, "k8", seed, 8, steady, steps=steps, seconds=0.1, peak=400, before=300)
        # K=16: entropy collapses and held-out hm@4 falls from step 100 (HALF_SOLVED) to the end (none solved)
        write_run(tmp_path, "k16", seed, 16, decaying, steps=steps, entropy_onset=120, seconds=0.2, peak=500,
                  before=300, evals={150: [4] * 5 + [0] * 35})
        write_run(tmp_path, "ctl", seed, 16, steady, steps=steps, seconds=0.2, peak=500, before=300,
                  extra={"entropy_target": 1.2}, reward=(0.45, 0.52)[seed])
    summary = build_report([str(tmp_path)], str(tmp_path / "report"))
    verdicts = {v["claim"][:3]: v["verdict"] for v in summary["verdicts"]}
    # (e) shows the control's training-reward cost, paired by seed, next to its verdict
    assert ("training reward over the last 20 steps 0.485 vs 0.500 (difference per seed -0.050, +0.020; "
            "paired by seed and step -0.015 [-0.050, +0.020])") in summary["verdicts"][4]["evidence"]
    # (f): these hand-made runs log no gradient noise; (g): 2 seeds are too few to judge a spread
    assert verdicts == {"(a)": "supported", "(b)": "supported", "(c)": "supported", "(d)": "supported",
                        "(e)": "supported", "(f)": "not measured", "(g)": "inconclusive"}
    arms = {a["name"]: a for a in summary["arms"]}
    assert arms["k8"]["hm@4_gain_at_100"]["value"] == pytest.approx(50.0)
    assert arms["k16"]["collapse_step"] == 120 and arms["k8"]["collapse_step"] is None
    assert arms["k16"]["step_time_ratio"] == pytest.approx(2.0) and arms["k16"]["memory_ratio"] == pytest.approx(1.25)
    # retention: the mean over the 20 steps up to the end / to step 100; the last step's alone beside it
    assert arms["k16"]["entropy_retention_final"] == pytest.approx(np.mean(decaying[-20:]), abs=1e-6)
    assert arms["k16"]["entropy_retention_last_step"] == pytest.approx(0.1)
    assert arms["k16"]["entropy_retention_at_100"] == pytest.approx(np.mean(decaying[80:100]), abs=1e-6)

    # now K=8 gains 5 points (CI about ±3) and K=16 costs the same as K=8 and K=16 costs the same as K=8: (a) and (d) refuted
    shutil.rmtree(tmp_path / "k8")
    for seed in (0, 1):
        write_run(tmp_path, "k8", seed, 8, steady, steps=steps, correct0=[0] * 200, correct100=[4] * 10 + [0] * 190,
                  seconds=0.2, peak=500, before=300)
    summary = build_report([str(tmp_path)], str(tmp_path / "report2"))
    verdicts = {v["claim"][:3]: v["verdict"] for v in summary["verdicts"]}
    assert verdicts["(a)"] == "refuted" and verdicts["(d)"] == "refuted"


def test_html_escapes_every_text():
    html = to_html("# <script>alert(1)</script>\n| a | `<b>` |\n|---|---|\n| x<y | **bold** & more |\n", Path("."))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html and "x&lt;y" in html
    assert "<strong>bold</strong> &amp; more" in html


def parsed_compare(monkeypatch, argv):
    """What `rlvr compare ARGV` would run: its CompareConfig, base settings and command line."""
    import rlvr.study.compare

    seen = {}

    def fake_run(cc, base, command="", progress=True):
        seen.update(cc=cc, base=base, command=command)
        return None, []

    monkeypatch.setattr(rlvr.study.compare, "run_compare", fake_run)
    main(["compare", *argv])
    return seen


def test_the_shipped_preset_loads_validates_and_flags_override_it(tmp_path, monkeypatch, capsys):
    seen = parsed_compare(monkeypatch, ["--preset", "smollm2", "--steps", "7", "--out", str(tmp_path / "c")])
    cc, base = seen["cc"], seen["base"]
    assert cc.steps == 7 and cc.out == str(tmp_path / "c")  # flags override the preset
    assert cc.k == [8, 16] and cc.seeds >= 2 and len(cc.variant) == 1 and base["model"] == "smollm2"
    assert seen["command"] == f"rlvr compare --preset smollm2 --steps 7 --out {tmp_path / 'c'}"
    plans = plan_runs(cc, base)  # every arm's full config validates (model, task, lengths, eval problems)
    assert {plan.arm for plan in plans} == {"k8", "k16", cc.variant[0].split("=")[0]}

    assert main(["compare", "--preset", "nope", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "smollm2" in err


def test_the_long_preset_runs_the_pilots_choice_with_the_issues_settings(monkeypatch):
    """smollm2-long reproduces docs/study_smollm2_long: its controls are the committed pilot's choice."""
    seen = parsed_compare(monkeypatch, ["--preset", "smollm2-long"])
    cc, base = seen["cc"], seen["base"]
    assert (cc.k, cc.seeds, base["seed"], cc.steps, cc.out) == ([8, 16], 4, 10, 200, "runs/study_smollm2_long")
    root = Path(__file__).resolve().parents[1] / "docs" / "study_smollm2_long" / "pilot"
    chosen = json.loads((root / "pilot.json").read_text())["chosen"]
    pilot_variants = [f"{name}={json.loads((root / name / 'seed300' / 'arm.json').read_text())['variant']}"
                      for name in chosen]
    assert cc.variant == pilot_variants
    plans = plan_runs(cc, base)
    assert len(plans) == 16
    assert {(p.config.model, p.config.task, p.config.steps, p.config.eval_every, p.config.eval_problems,
             p.config.eval_samples, p.config.passk_eval_samples) for p in plans} == {("smollm2", "mul", 200, 25, 104, 8, 64)}
    # fresh seeds: the first study ran 0-1, its pilot 100, this study's pilot 300
    assert {p.config.seed for p in plans} == {10, 11, 12, 13}


def test_passk_evaluation_at_start_and_end_shared_across_arms_of_a_seed(model_dir, tmp_path, capsys):
    """--passk-eval-samples: a wide evaluation at step 0 and at the end of every run; compare
    computes a seed's step 0 once (the second arm reuses the first's), and that reused row is what
    the arm would have computed itself."""
    from math import comb

    out = tmp_path / "cmp"
    small = [*SMALL, "--steps", "4", "--eval-every", "2", "--passk-eval-samples", "8"]
    code = main(["compare", "--model", model_dir, "--k", "4", "8", "--variant", "--out", str(out), *small])
    assert code == 0, capsys.readouterr()
    rows = {arm: [json.loads(line) for line in (out / arm / "seed0" / "passk.jsonl").read_text().splitlines()]
            for arm in ("k4", "k8")}
    for arm, (start, end) in rows.items():
        assert [start["step"], end["step"]] == [0, 4] and start["ks"] == [1, 4] and start["n_samples"] == 8
        assert start["n_problems"] == 8 and all(p["n"] == 8 for p in start["per_problem"])
        for row in (start, end):  # pass@k against the formula itself
            counts = [p["correct"] for p in row["per_problem"]]
            assert row["metrics"]["pass@1"]["value"] == pytest.approx(sum(counts) / (8 * len(counts)))
            expect = sum(1 - comb(8 - c, 4) / comb(8, 4) for c in counts) / len(counts)
            assert row["metrics"]["pass@4"]["value"] == pytest.approx(expect)
    assert "reused_from" not in rows["k4"][0] and rows["k8"][0]["reused_from"] == str(out / "k4" / "seed0")
    assert rows["k8"][0]["per_problem"] == rows["k4"][0]["per_problem"]
    events = [json.loads(line) for line in (out / "k8" / "seed0" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "passk_eval"] == [0, 4]

    # the K=8 run on its own evaluates step 0 itself, and gets exactly the row it was given
    alone = tmp_path / "alone"
    train_toml = (out / "k8" / "seed0" / "train.toml").read_text().replace(str(out / "k8" / "seed0"), str(alone))
    (tmp_path / "alone.toml").write_text(train_toml)
    assert main(["train", "--config", str(tmp_path / "alone.toml")]) == 0
    own = [json.loads(line) for line in (alone / "passk.jsonl").read_text().splitlines()]
    assert "reused_from" not in own[0] and own[0]["per_problem"] == rows["k8"][0]["per_problem"]
    assert own[1]["per_problem"] == rows["k8"][1]["per_problem"]  # and the same end

    summary = json.loads((out / "summary.json").read_text())
    arm = summary["arms"][1]
    assert set(arm["passk"]["base"]) == {"1", "4"} and arm["passk"]["last_minus_base"]["4"]["ci"] is not None
    assert "## pass@k up to k = 4: the base model and the end" in (out / "report.md").read_text()


def test_compare_runs_episodes_and_a_stale_variant(model_dir, tmp_path, capsys):
    """Options of train that compare passes on: --env (every arm samples episodes) and a variant
    with --max-staleness (that arm's rows carry async/...); the report builds from both."""
    out = tmp_path / "cmp"
    code = main(["compare", "--model", model_dir, "--task", "mul", "--env", "calc", "--k", "4", "--variant",
                 "stale=--max-staleness 2", "--out", str(out), *SMALL])
    assert code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in summary["arms"]] == ["k4", "stale"]
    for arm in ("k4", "stale"):
        config = json.loads((out / arm / "seed0" / "config.json").read_text())["config"]
        assert config["env"] == "calc"
        rows = [json.loads(line) for line in (out / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert all("episode/turns" in r for r in rows if r["step"])
        assert any("async/staleness_max" in r for r in rows) == (arm == "stale")
    assert (out / "report.html").is_file()
