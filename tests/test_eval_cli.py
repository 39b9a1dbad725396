"""`rlvr eval`: the printed table and eval.json, whose per-problem counts recompute the metrics."""
import json

from rlvr.cli import main
from rlvr.algo.stats import metrics_from_per_problem, pass_at_k


def test_eval_prints_table_and_writes_recomputable_json(model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", model_dir, "--task", "add2", "--problems", "12", "--samples", "6",
                 "--k", "1", "4", "--max-new-tokens", "5", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "hm@4" in printed and "95% CI" in printed and "12" in printed
    report = json.loads(out.read_text())
    assert report["split"] == "heldout" and report["n_samples"] == 6 and report["n_problems"] == 12
    assert set(report["metrics"]) >= {"pass@1", "hm@4", "hm@4_ranked", "pass@1_greedy"}
    per_problem = report["per_problem"]
    assert len(per_problem) == 12 and all({"id", "n", "correct", "greedy_correct"} <= set(p) for p in per_problem)
    recomputed = sum(pass_at_k(p["n"], p["correct"], 4) for p in per_problem) / 12
    assert abs(recomputed - report["metrics"]["hm@4"]["value"]) < 1e-12
    assert metrics_from_per_problem(per_problem, [1, 4]) == report["metrics"]
    for m in report["metrics"].values():
        assert m["ci"][0] <= m["value"] <= m["ci"][1] and m["n"] == 12


def test_eval_refuses_k_above_samples(model_dir, tmp_path, capsys):
    code = main(["eval", "--model", model_dir, "--samples", "4", "--k", "8", "--out", str(tmp_path / "e.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--k" in err and "k=8" in err and "--samples" in err


def test_eval_refuses_a_directory_as_out_before_any_work(model_dir, tmp_path, capsys):
    code = main(["eval", "--model", model_dir, "--samples", "4", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a directory" in err and str(tmp_path / "eval.json") in err


def test_eval_of_a_run_directory(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", model_dir, "--task", "add2", "--steps", "1", "--k", "2",
                 "--prompts-per-step", "2", "--max-new-tokens", "5", "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "e.json"
    assert main(["eval", "--run", str(run), "--problems", "4", "--samples", "4", "--k", "1", "4",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "add2" and report["model"].endswith("final")
