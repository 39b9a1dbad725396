"""`rlvr report` on its own: model text escaped in report.md and report.html, tables that parse,
best-checkpoint and reward-collapse columns, the reward-collapse verdict rules, and run
directories older than samples.jsonl / best.json. Mirrors rlvr/study/report/."""
import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from made_runs import write_run
from rlvr.cli import main
from rlvr.study.report import build_report, read_run, to_html
from rlvr.study.report.render import code_span, escape_text

HOSTILE = ("<script>alert(1)</script> a|b `tick` ```fence``` **bold** [x](javascript:alert(1)) "
           "<img src=x onerror=alert(1)> &amp; back\\slash\nsecond line \\")


class Page(HTMLParser):
    """report.html read back: its tags, and each table as header cells and body rows of cell text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.tables, self.cell, self.section = [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append({"head": [], "rows": [], "thead": False})
        elif tag in ("thead", "tbody"):
            self.section = tag
            self.tables[-1]["thead"] |= tag == "thead"
        elif tag == "tr" and self.section == "tbody":
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell is not None:
            text = "".join(self.cell)
            if self.section == "thead":
                self.tables[-1]["head"].append(text)
            else:
                self.tables[-1]["rows"][-1].append(text)
            self.cell = None
        elif tag == "table":
            self.section = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def md_row_cells(line: str) -> int:
    """Cells of a markdown table row, splitting as the table parser does: a pipe right after a
    backslash is text."""
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


def md_tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def assert_page_is_sound(page_text: str, md: str) -> Page:
    """Every markdown table keeps one column count; every HTML table has a header row in <thead>
    equal to the markdown's header, no dash-only body row, rows as wide as the header; nothing
    executable on the page."""
    page = parse_page(page_text)
    tables = md_tables(md)
    assert len(page.tables) == len(tables) > 0
    for rows, table in zip(tables, page.tables):
        widths = {md_row_cells(r) for r in rows}
        assert len(widths) == 1, rows
        assert table["thead"] and len(table["head"]) == widths.pop()
        assert table["head"] == [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", rows[0].strip().strip("|"))]
        for row in table["rows"]:
            assert len(row) == len(table["head"])
            assert not all(set(c.strip()) <= set("-:") for c in row), row
    for tag, attrs in page.tags:
        assert tag not in ("script", "iframe", "object", "embed", "a"), tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    return page


# ---------------------------------------------------------------------------------------- escaping

def test_escape_text_keeps_text_literal_in_a_table_cell():
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    for text in (HOSTILE, "\\|", "x|", "|", "_a_ *b* x86_64", "1. item", "# head", "\r\n\t\x00\x1b"):
        md = f"| h | i |\n|---|---|\n| {escape_text(text)} | {code_span(text, in_table=True)} |\n"
        page = parse_page(parser.render(md))
        (cell, code), = page.tables[0]["rows"]
        shown = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}",
                       text.replace("\r\n", "\n").replace("\t", " ")).replace("\n", " ⏎ ")
        assert cell.strip() == shown.strip()
        assert code.strip() == " ".join(text.splitlines()).strip() or "\x00" in text
    assert escape_text("a" * 400, 300).endswith("… (100 more characters)")


def test_html_tables_have_a_header_and_no_separator_row():
    md = "# t\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\ntext `<b>` **bold** & more\n"
    page = parse_page(to_html(md, Path(".")))
    (table,) = page.tables
    assert table["thead"] and table["head"] == ["a", "b"] and table["rows"] == [["1", "2"], ["3", "4"]]
    assert "&lt;b&gt;" in to_html(md, Path(".")) and "<strong>bold</strong> &amp; more" in to_html(md, Path("."))


def test_report_of_a_real_run_with_hostile_completions_renders_escaped(model_dir, tmp_path, capsys):
    run = tmp_path / "runs" / "k4" / "seed0"
    assert main(["train", "--model", model_dir, "--k", "4", "--steps", "2", "--eval-every", "2", "--eval-problems", "4",
                 "--eval-samples", "4", "--eval-show", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                 "--out", str(run)]) == 0, capsys.readouterr()
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {0, 2} and {r["kind"] for r in rows} == {"greedy", "sampled"}
    for r in rows:
        if r["step"] == 2:
            r["completion"], r["extracted"] = HOSTILE, "</td><script>alert(2)</script>"
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = json.loads((run / "best" / "best.json").read_text())

    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    page_text, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "<script" not in page_text.lower() and "<img src=x" not in page_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page_text
    page = assert_page_is_sound(page_text, md)
    samples = next(t for t in page.tables if t["head"][:3] == ["question", "answer", "kind"])
    assert samples["head"][3:] == ["step 0 completion", "step 0 extracted, score", "step 2 completion",
                                   "step 2 extracted, score"]
    assert len(samples["rows"]) == 4  # 2 problems x greedy, sampled
    shown = HOSTILE.replace("\n", " ⏎ ")
    assert all(row[5].strip() == shown for row in samples["rows"])
    assert all(row[6].startswith("</td><script>alert(2)</script>, ") for row in samples["rows"])
    # the per-arm table: best step and value next to the last evaluation
    results = next(t for t in page.tables if t["head"][0] == "arm" and "hm@4 @last" in t["head"])
    best_cell = results["rows"][0][results["head"].index("best hm@4 (step per seed)")]
    assert best_cell == f"{best['value']:.3f} (step {best['step']})"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"][0]["best_step"] == [best["step"]] and summary["arms"][0]["best_value"] == pytest.approx(best["value"])
    assert summary["arms"][0]["reward_collapse_step"] is None


# ---------------------------------------------------------------------------------------- hand-made runs

STEADY, DECAYING = [1.0] * 150, list(np.linspace(1.0, 0.4, 150))  # retention 0.4: below 0.5, above the 0.3 ratio


def verdicts_of(tmp_path: Path, name: str) -> tuple[dict, dict]:
    summary = build_report([str(tmp_path / "runs")], str(tmp_path / name))
    return {v["claim"][:3]: v for v in summary["verdicts"]}, {a["name"]: a for a in summary["arms"]}


def test_reward_collapse_counts_where_the_claim_is_about_training_collapsing(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY, reward_onset=90 if seed else None)
        write_run(runs, "k16", seed, 16, STEADY, reward_onset=(120, 130)[seed])
        write_run(runs, "ctl", seed, 16, STEADY, extra={"entropy_target": 1.2})
    v, arms = verdicts_of(tmp_path, "r1")
    # (c): training collapsed in reward while entropy stayed steady: not refuted any more, not supported
    assert v["(c)"]["verdict"] == "inconclusive"
    assert "reward-collapse onsets per seed [120, 130]" in v["(c)"]["evidence"]
    # (e): the control kept K=16 stable where plain K=16 collapsed in reward
    assert v["(e)"]["verdict"] == "supported" and "(in reward)" in v["(e)"]["evidence"]
    assert "reward-collapse onsets [none, none] vs [120, 130]" in v["(e)"]["evidence"]
    # (b) is about entropy: a reward collapse is mentioned, the verdict unchanged
    assert v["(b)"]["verdict"] == "supported" and "fired in 1 of 2 seed(s)" in v["(b)"]["evidence"]
    assert arms["k16"]["reward_collapse_step"] == 120 and arms["ctl"]["reward_collapse_step"] is None
    md = (tmp_path / "r1" / "report.md").read_text()
    k16_row = next(line for line in md.splitlines() if line.startswith("| k16 | 16 |"))
    assert "| none, none | 120, 130 |" in k16_row

    # entropy decayed (without a detected collapse) and reward collapsed: (c) supported; a control
    # whose reward collapses is not stable: (e) refuted
    for arm in ("k16", "ctl"):
        for seed in (0, 1):
            shutil.rmtree(runs / arm / f"seed{seed}")
    for seed in (0, 1):
        write_run(runs, "k16", seed, 16, DECAYING, reward_onset=120)
        write_run(runs, "ctl", seed, 16, STEADY, extra={"entropy_target": 1.2}, reward_onset=140 if seed else None)
    v, _ = verdicts_of(tmp_path, "r2")
    assert v["(c)"]["verdict"] == "supported"
    assert v["(e)"]["verdict"] == "refuted" and "training reward collapsed in 1 seed(s)" in v["(e)"]["evidence"]


def test_without_reward_collapses_the_verdicts_keep_their_entropy_rules(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY)
        write_run(runs, "k16", seed, 16, STEADY)
        write_run(runs, "ctl", seed, 16, STEADY, extra={"entropy_target": 1.2})
    v, _ = verdicts_of(tmp_path, "r")
    assert v["(c)"]["verdict"] == "refuted" and v["(e)"]["verdict"] == "inconclusive"
    assert "reward-collapse onsets per seed [none, none]" in v["(c)"]["evidence"]


def test_retention_is_judged_on_the_last_20_steps_mean_not_one_step(tmp_path):
    """One step's entropy swings widely late in a run: a control whose entropy sat at 0.4 of its
    start for its last 19 steps and spiked back on the very last one is not steady, and a dip at
    step 100 alone does not make K=8's retention at step 100 low."""
    runs = tmp_path / "runs"
    spiked = [1.0] * 130 + [0.4] * 19 + [1.0]  # last step 1.0, last 20 steps' mean 0.43
    dip = [1.0] * 99 + [0.2] + [1.0] * 50  # step 100 alone at 0.2
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, dip)
        write_run(runs, "k16", seed, 16, COLLAPSING, entropy_onset=100)
        write_run(runs, "ctl", seed, 16, spiked, extra={"entropy_target": 1.2})
    v, arms = verdicts_of(tmp_path, "r")
    assert arms["ctl"]["entropy_retention_final"] == pytest.approx((19 * 0.4 + 1.0) / 20)
    assert arms["ctl"]["entropy_retention_last_step"] == pytest.approx(1.0)
    assert arms["k16"]["entropy_retention_final"] == pytest.approx(np.mean(COLLAPSING[-20:]), abs=1e-6)
    assert arms["k8"]["entropy_retention_at_100"] == pytest.approx((19 * 1.0 + 0.2) / 20)
    assert v["(e)"]["verdict"] == "refuted" and "did not stay steady" in v["(e)"]["evidence"]
    assert "retention at the end 0.43 (per seed ['0.43', '0.43']; mean of the last 20 steps; the last step alone " \
           "1.00) vs 0.16 without it" in v["(e)"]["evidence"]
    assert v["(b)"]["verdict"] == "supported"
    md = (tmp_path / "r" / "report.md").read_text()
    ctl_row = next(line for line in md.splitlines() if line.startswith("| ctl | 16 |"))
    assert "| 0.43 (1.00) |" in ctl_row and "averaged over the 20 steps up to step 100" in md


def test_best_and_samples_columns_and_old_runs_without_them(tmp_path):
    runs = tmp_path / "runs"
    samples = [{"step": s, "id": "p0", "question": "1+1?", "answer": "2", "kind": kind,
                "completion": f"{kind} at {s}", "extracted": None if s == 0 else "2", "score": float(s > 0)}
               for s in (0, 50, 150) for kind in ("greedy", "sampled")]
    write_run(runs, "k8", 0, 8, STEADY, best={"step": 100, "value": 0.6}, samples=samples)
    write_run(runs, "k8", 1, 8, STEADY, best={"step": 125, "value": 0.7})
    # a run from before best.json, samples.jsonl and the reward detector
    write_run(runs, "k16", 0, 16, STEADY, extra={"reward_collapse_ratio": None, "reward_collapse_patience": None})
    summary = build_report([str(runs)], str(tmp_path / "r"))
    arms = {a["name"]: a for a in summary["arms"]}
    assert arms["k8"]["best_step"] == [100, 125] and arms["k8"]["best_value"] == pytest.approx(0.65)
    assert arms["k16"]["best_step"] == [None] and arms["k16"]["best_value"] is None
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| 0.650 (steps 100, 125) |" in md
    k16_row = next(line for line in md.splitlines() if line.startswith("| k16 | 16 |"))
    assert "| n/a |" in k16_row and "| none | off |" in k16_row
    assert "| 1+1? | 2 | greedy | greedy at 0 | none, 0.00 | greedy at 150 | 2, 1.00 |" in md
    assert "n/a: this run has no samples.jsonl" in md
    assert_page_is_sound((tmp_path / "r" / "report.html").read_text(), md)


# ------------------------------------------------------------------ training collapse, cost CIs, light files

COLLAPSING = list(np.linspace(1.0, 0.1, 150))  # retention 0.1, the detector fires (onset given per run)
BASE64 = [64] * 20 + [0] * 20  # pass@64 0.5 on 40 problems


def test_training_collapse_is_a_measured_loss_not_entropy_alone(tmp_path):
    runs = tmp_path / "runs"

    def k16_runs(**kw):
        shutil.rmtree(runs / "k16", ignore_errors=True)
        for seed in (0, 1):
            write_run(runs, "k16", seed, 16, COLLAPSING, entropy_onset=110, **kw)

    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY)
    # entropy collapses, but hm@4 holds from step 100 to the end and pass@64 equals the base model's: refuted
    k16_runs(evals={150: [4] * 20 + [0] * 20}, passk={0: BASE64, 150: BASE64})
    v, arms = verdicts_of(tmp_path, "r1")
    assert v["(c)"]["verdict"] == "refuted" and "(entropy collapsed, training did not)" in v["(c)"]["evidence"]
    assert "held-out hm@4 from step 100 to the end +0.0 pts [+0.0, +0.0]" in v["(c)"]["evidence"]
    assert "pass@64 at the end minus the base model +0.0 pts" in v["(c)"]["evidence"]
    assert arms["k16"]["passk"]["base"]["64"]["value"] == pytest.approx(0.5)
    assert arms["k16"]["hm@4_change_100_to_last"]["value"] == pytest.approx(0.0)

    # pass@64 falls below the base model: 15 of the 20 reachable problems are lost (−37.5 points)
    k16_runs(evals={150: [4] * 20 + [0] * 20}, passk={0: BASE64, 150: [64] * 5 + [0] * 35})
    v, arms = verdicts_of(tmp_path, "r2")
    assert v["(c)"]["verdict"] == "supported"
    assert "pass@64 at the end minus the base model -37.5 pts" in v["(c)"]["evidence"]
    assert arms["k16"]["passk"]["last_minus_base"]["64"]["value"] == pytest.approx(-37.5)
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "## pass@k up to k = 64: the base model and the end" in md
    k16_row = next(line for line in md.splitlines() if line.startswith("| k16 | 0.500"))
    assert "-37.5 pts" in k16_row

    # held-out hm@4 falls after step 100 (no wide evaluation): supported by that alone
    k16_runs(evals={150: [4] * 5 + [0] * 35})
    v, _ = verdicts_of(tmp_path, "r3")
    assert v["(c)"]["verdict"] == "supported" and "from step 100 to the end -37.5 pts" in v["(c)"]["evidence"]

    # entropy collapse with nothing measured after step 100: neither supported nor refuted
    k16_runs()
    v, _ = verdicts_of(tmp_path, "r4")
    assert v["(c)"]["verdict"] == "inconclusive" and "neither measured nor ruled out" in v["(c)"]["evidence"]
    assert "no measured loss available" in v["(c)"]["evidence"]


def test_pass64_against_the_base_model_is_its_own_finding_read_from_its_ci(tmp_path):
    """summary.json's `reach` and report.md's line under the verdicts: per arm pass@64 at the end
    minus the base model, paired per problem, read as lost / gained / no change from its CI."""
    runs = tmp_path / "runs"
    gained = [64] * 30 + [0] * 10  # 10 more of the 40 problems reached: +25 points
    lost = [64] * 5 + [0] * 35  # 15 of the 20 reachable problems lost: -37.5 points
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY, passk={0: BASE64, 150: gained})
        write_run(runs, "k16", seed, 16, COLLAPSING, entropy_onset=110, passk={0: BASE64, 150: lost})
    build_report([str(runs)], str(tmp_path / "r1"))
    reach = json.loads((tmp_path / "r1" / "summary.json").read_text())["reach"]
    rows = {r["arm"]: r for r in reach["arms"]}
    assert reach["k"] == 64 and {a: r["reading"] for a, r in rows.items()} == {"k8": "gained", "k16": "lost"}
    assert rows["k8"]["pass@64_minus_base"]["value"] == pytest.approx(25.0)
    assert rows["k16"]["pass@64_minus_base"]["value"] == pytest.approx(-37.5)
    # pass@1 = correct / 64 per problem, so its change equals pass@64's here (all or nothing per problem)
    assert rows["k16"]["pass@1_minus_base"]["value"] == pytest.approx(-37.5)
    assert reach["statement"].startswith("k16 lost pass@64 against the base model (CI below 0)")
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "**Finding beyond the claims, pass@64 at the end against the base model:** k16 lost pass@64" in md

    # the same end as the base model: a CI holding 0 reads "no change measured", and no arm lost
    shutil.rmtree(runs / "k16")
    for seed in (0, 1):
        write_run(runs, "k16", seed, 16, COLLAPSING, entropy_onset=110, passk={0: BASE64, 150: BASE64})
    build_report([str(runs)], str(tmp_path / "r2"))
    reach = json.loads((tmp_path / "r2" / "summary.json").read_text())["reach"]
    assert {r["arm"]: r["reading"] for r in reach["arms"]} == {"k8": "gained", "k16": "no change measured"}
    assert reach["statement"].startswith("no arm lost pass@64 against the base model (no CI below 0); k8 gained it")

    # without --passk-eval-samples there is no finding, and the report says none
    shutil.rmtree(runs)
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY)
    build_report([str(runs)], str(tmp_path / "r3"))
    assert json.loads((tmp_path / "r3" / "summary.json").read_text())["reach"] is None
    assert "Finding beyond the claims" not in (tmp_path / "r3" / "report.md").read_text()


def test_cost_verdict_uses_the_ratio_cis_and_is_inconclusive_when_one_straddles(tmp_path):
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY, seconds=0.1, peak=400, before=300)
        # K=16's step time scatters around 0.15 s (1.5× K=8's): its CI straddles the band's lower end
        write_run(runs, "k16", seed, 16, STEADY, seconds=list(rng.uniform(0.05, 0.25, 150)), peak=500, before=300)
    v, arms = verdicts_of(tmp_path, "r1")
    ci = arms["k16"]["step_time_ratio_ci"]
    assert ci["ci"][0] < 1.5 < ci["ci"][1] and ci["seeds"] == 2
    assert arms["k16"]["step_memory_ratio_ci"] == {"value": 2.0, "ci": [2.0, 2.0], "seeds": 2,
                                                   "cross_machine_seeds": [], "machine_ratio": None}
    assert v["(d)"]["verdict"] == "inconclusive" and "straddles" in v["(d)"]["evidence"]
    assert arms["k8"]["step_time_ratio_ci"] is None  # the first arm is the reference

    shutil.rmtree(runs / "k16")
    for seed in (0, 1):
        write_run(runs, "k16", seed, 16, STEADY, seconds=list(rng.uniform(0.3, 0.32, 150)), peak=500, before=300)
    v, arms = verdicts_of(tmp_path, "r2")
    assert arms["k16"]["step_time_ratio_ci"]["ci"][0] > 2.5 and v["(d)"]["verdict"] == "refuted"


def test_several_controls_are_each_judged_and_one_stable_control_supports_e(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY)
        write_run(runs, "k16", seed, 16, COLLAPSING, entropy_onset=110)
        write_run(runs, "ctl-a", seed, 16, COLLAPSING, entropy_onset=120, extra={"entropy_coef": 0.05})
        write_run(runs, "ctl-b", seed, 16, STEADY, extra={"positive_weight": 0.1})
    v, _ = verdicts_of(tmp_path, "r")
    assert v["(e)"]["verdict"] == "supported"
    first, second = v["(e)"]["evidence"].split(" || ")
    assert first.startswith("'ctl-a'") and "did not stay steady" in first
    assert second.startswith("'ctl-b'") and "steady where plain K=16 collapsed" in second


def test_a_controls_cost_in_training_reward_is_measured_paired_by_seed_and_step(tmp_path):
    runs, rng = tmp_path / "runs", np.random.default_rng(3)
    rewards = {}
    for seed in (0, 1, 2):
        rewards["k16", seed] = list(rng.uniform(0.3, 0.7, 150))
        rewards["ctl", seed] = list(np.asarray(rewards["k16", seed]) - rng.uniform(0.05, 0.15, 150))
        write_run(runs, "k8", seed, 8, STEADY)
        write_run(runs, "k16", seed, 16, COLLAPSING, entropy_onset=110, reward=rewards["k16", seed])
        write_run(runs, "ctl", seed, 16, STEADY, extra={"entropy_coef": 0.05}, reward=rewards["ctl", seed])
    v, arms = verdicts_of(tmp_path, "r")
    # shown, not judged: (e) is about stability and held-out accuracy (docs/compare.md)
    assert v["(e)"]["verdict"] == "supported"
    versus = arms["ctl"]["vs_plain_k16"]
    # an independent computation: per seed the mean of the last 20 steps' paired differences, then the mean
    expected = np.mean([np.mean(np.subtract(rewards["ctl", s], rewards["k16", s])[-20:]) for s in (0, 1, 2)])
    assert versus["reward_last20"]["value"] == pytest.approx(expected, abs=1e-6)
    low, high = versus["reward_last20"]["ci"]
    assert low < expected < high < 0 and versus["reward_last20"]["seeds"] == 3
    assert f"paired by seed and step {expected:+.3f} [{low:+.3f}, {high:+.3f}]" in v["(e)"]["evidence"]
    assert versus["hm@4_last"]["value"] == pytest.approx(0.0)  # same evaluations in both arms
    assert arms["k16"]["vs_plain_k16"] is None and arms["k8"]["vs_plain_k16"] is None


def test_a_study_committed_without_weights_rebuilds_the_same_report(tmp_path):
    for keep, name in ((True, "with"), (False, "light")):
        for seed in (0, 1):
            write_run(tmp_path / name, "k8", seed, 8, STEADY, keep_final=keep, passk={0: BASE64, 150: BASE64},
                      extra={"model": "smollm2", "task": "mul"})
            write_run(tmp_path / name, "k16", seed, 16, COLLAPSING, entropy_onset=110, keep_final=keep,
                      extra={"model": "smollm2", "task": "mul"})
    with_weights = build_report([str(tmp_path / "with")], str(tmp_path / "r1"))
    light = build_report([str(tmp_path / "light")], str(tmp_path / "r2"))
    assert light == with_weights
    assert light["model"] == "smollm2" and light["task"] == "mul"
    arm = {a["name"]: a for a in light["arms"]}["k16"]
    assert arm["settings"]["k"] == 16 and arm["settings"]["model"] == "smollm2" and "out" not in arm["settings"]
    assert arm["seeds"] == [0, 1]
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "did not finish" not in md


def test_run_log_says_when_each_run_ran_on_which_commit_and_sums_the_parts_of_a_resumed_run(tmp_path):
    write_run(tmp_path / "runs", "k8", 0, 8, STEADY)
    write_run(tmp_path / "runs", "k16", 0, 16, STEADY)
    run = tmp_path / "runs" / "k16" / "seed0"
    written = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**written, "rlvr_commit": "abc1234"}))
    events = [{"event": "model", "step": 0, "time": "2026-12-03T10:00:00Z"},
              {"event": "eval", "step": 25, "time": "2026-12-03T10:20:00Z"},  # then killed
              {"event": "model", "step": 20, "time": "2026-12-04T09:00:00Z"},  # resumed a day later
              {"event": "resume", "step": 20, "time": "2026-12-04T09:00:05Z"},
              {"event": "done", "step": 150, "time": "2026-12-04T09:30:00Z"}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    summary = build_report([str(tmp_path / "runs")], str(tmp_path / "r"))
    log = {r["arm"]: r for r in summary["runs"]}
    assert log["k16"] == {"arm": "k16", "seed": 0, "status": "finished", "commit": "abc1234", "last_step": 150,
                          "parts": 2, "started": "2026-12-03 10:00 UTC", "ended": "2026-12-04 09:30 UTC",
                          "wall_seconds": 50 * 60.0, "probe_seconds": None}
    assert log["k8"]["wall_seconds"] is None and log["k8"]["status"] == "finished"  # no time stamps: n/a
    md = (tmp_path / "r" / "report.md").read_text()
    table = next(t for t in md_tables(md) if t[0].startswith("| arm | seed | status"))
    assert any("| k16 | 0 | finished | 150 | 2 | 2026-12-03 10:00 UTC | 2026-12-04 09:30 UTC | 50 min | n/a | `abc1234` |"
               == row for row in table)


def stamp_step0_eval(run: Path, seconds: float) -> None:
    """Give a hand-made run time-stamped events whose step-0 evaluation took `seconds`."""
    t0 = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    stamp = lambda dt: (t0 + timedelta(seconds=dt)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    events = [{"event": "model", "step": 0, "time": stamp(0)}, {"event": "eval", "step": 0, "time": stamp(seconds)},
              {"event": "done", "step": 150, "time": stamp(seconds + 600)}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_a_seed_whose_runs_ran_on_machines_of_different_speed_is_left_out_of_the_step_time_ratio(tmp_path):
    """The step-0 evaluation is the same work in every run of a seed: its wall time checks the machine."""
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(runs, "k8", seed, 8, STEADY, seconds=0.1, peak=400, before=300)
        # seed 2's K=16 ran on a machine 2x slower: its steps read 3.6x K=8's, its step-0 evaluation 2x
        write_run(runs, "k16", seed, 16, STEADY, seconds=0.36 if seed == 2 else 0.18, peak=500, before=300)
        stamp_step0_eval(runs / "k8" / f"seed{seed}", 60)
        stamp_step0_eval(runs / "k16" / f"seed{seed}", {0: 63, 1: 60, 2: 120}[seed])
    v, arms = verdicts_of(tmp_path, "r")
    t = arms["k16"]["step_time_ratio_ci"]
    assert t["cross_machine_seeds"] == [2] and t["seeds"] == 2
    assert t["value"] == pytest.approx(1.8) and t["ci"] == pytest.approx([1.8, 1.8])
    assert t["machine_ratio"] == pytest.approx([1.0, 1.05])
    # memory does not depend on the machine's speed: every seed counts
    assert arms["k16"]["step_memory_ratio_ci"]["seeds"] == 3 and arms["k16"]["step_memory_ratio_ci"]["cross_machine_seeds"] == []
    assert v["(d)"]["verdict"] == "supported"
    assert "seed(s) 2 left out of the step-time ratio" in v["(d)"]["evidence"]
    assert "took 1.00-1.05× as long as K=8's" in v["(d)"]["evidence"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| 1.80 [1.80, 1.80] † |" in md and "k16: seed(s) 2." in md
    log = {(r["arm"], r["seed"]): r["probe_seconds"] for r in json.loads((tmp_path / "r" / "summary.json").read_text())["runs"]}
    assert log[("k16", 2)] == 120 and log[("k8", 0)] == 60
    runs_table = next(t for t in md_tables(md) if t[0].startswith("| arm | seed | status"))
    assert any(row.startswith("| k16 | 2 | finished |") and "| 120 s |" in row for row in runs_table)

    # every seed on other machines: no step-time ratio, and (d) cannot be judged on it
    for seed in (0, 1):
        stamp_step0_eval(runs / "k16" / f"seed{seed}", 30)
    v, arms = verdicts_of(tmp_path, "r2")
    assert arms["k16"]["step_time_ratio_ci"] == {"value": None, "ci": None, "seeds": 0, "cross_machine_seeds": [0, 1, 2],
                                                 "machine_ratio": None}
    assert v["(d)"]["verdict"] == "inconclusive" and "K=16/K=8 step time n/a" in v["(d)"]["evidence"]
    assert "| n/a † |" in (tmp_path / "r2" / "report.md").read_text()


def test_the_machine_check_times_the_part_that_evaluated_step0_when_long_enough_to_stamp(tmp_path):
    write_run(tmp_path / "runs", "k8", 0, 8, STEADY)
    run = tmp_path / "runs" / "k8" / "seed0"
    stamp_step0_eval(run, 45)
    assert read_run(run).probe_seconds == 45
    stamp_step0_eval(run, 5)  # the built-in model's evaluation: too short for one-second stamps
    assert read_run(run).probe_seconds is None
    events = [{"event": "model", "step": 0, "time": "2026-12-03T10:00:00Z"},
              {"event": "model", "step": 0, "time": "2026-12-03T11:00:00Z"},  # killed before its evaluation ended
              {"event": "eval", "step": 0, "time": "2026-12-03T11:01:00Z"},
              {"event": "model", "step": 20, "time": "2026-12-04T09:00:00Z"},  # resumed later: no step-0 evaluation
              {"event": "done", "step": 150, "time": "2026-12-04T09:30:00Z"}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert read_run(run).probe_seconds == 60  # timed in the part that evaluated step 0
    (run / "events.jsonl").write_text("".join(json.dumps({k: v for k, v in e.items() if k != "time"}) + "\n"
                                              for e in events))
    assert read_run(run).probe_seconds is None  # a run older than the time stamps


# ---------------------------------------------------------------- claims (f) and (g)

def noise_rows(seed: int, signal: float, noise: float, intra: float, late_signal: float | None = None):
    """step -> grad/* keys: per-step estimates scattered ±30% around the given means (seeded)."""
    rng = np.random.default_rng(seed)

    def row(step: int) -> dict:
        g = late_signal if late_signal is not None and step > 100 else signal
        jitter = 1 + 0.3 * rng.standard_normal(3)
        return {"grad/signal": g * jitter[0], "grad/noise": noise * jitter[1], "grad/noise_intra": intra * jitter[2]}
    return row


def test_gradient_estimates_are_judged_on_the_snr_at_equal_prompts_and_per_completion(tmp_path):
    """K=16 halves the intra-prompt part of tr Σ (intra 40: 5 per prompt at K=8, 2.5 at K=16, plus
    an inter term of 3): SNR at equal prompts 8/5.5 = 1.45× K=8's, per completion 0.73×."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY, noise=noise_rows(seed, 1.0, 8.0, 40.0))
        write_run(runs, "k16", seed, 16, DECAYING, entropy_onset=120, noise=noise_rows(10 + seed, 1.0, 5.5, 40.0))
    v, arms = verdicts_of(tmp_path, "r1")
    f = v["(f)"]
    assert f["verdict"] == "supported" and f["at_equal_compute"] == "refuted", f
    head = "steps 1-100 (2 seed(s), 200 paired steps): gradient SNR K=16/K=8 at equal prompts per step "
    assert head in f["evidence"]
    assert float(f["evidence"].split(head)[1].split()[0]) == pytest.approx(8 / 5.5, rel=0.1)
    assert "steps after 100 (2 seed(s), 100 paired steps)" in f["evidence"]
    assert "from K=16's entropy-collapse onset on (per seed 0: 120, 1: 120" in f["evidence"]
    assert "K=16's advantage holds after its entropy collapsed" in f["evidence"]
    assert arms["k16"]["grad_noise"]["group_size"] == 16
    assert arms["k8"]["grad_noise"]["noise_scale"] == pytest.approx(8.0, rel=0.1)
    assert arms["k16"]["grad_noise"]["intra_share"] == pytest.approx(2.5 / 5.5, rel=0.1)
    assert "## Gradient noise per arm" in (tmp_path / "r1" / "report.md").read_text()

    # after step 100 K=16's signal falls to a third: its SNR is below K=8's there, refuting the claim
    shutil.rmtree(runs / "k16")
    for seed in (0, 1):
        write_run(runs, "k16", seed, 16, DECAYING, entropy_onset=120,
                  noise=noise_rows(10 + seed, 1.0, 5.5, 40.0, late_signal=0.33))
    f = verdicts_of(tmp_path, "r2")[0]["(f)"]
    assert f["verdict"] == "refuted" and "worse than K=8's after its entropy collapsed" in f["evidence"], f

    # after step 100 neither arm's |G|² estimate is positive: no ratio, and the evidence says why
    for arm, k, base in (("k8", 8, 0), ("k16", 16, 10)):
        shutil.rmtree(runs / arm)
        for seed in (0, 1):
            write_run(runs, arm, seed, k, DECAYING if k == 16 else STEADY, entropy_onset=120 if k == 16 else None,
                      noise=noise_rows(base + seed, 1.0, 5.5, 40.0, late_signal=-0.5))
    f = verdicts_of(tmp_path, "r3")[0]["(f)"]
    late = f["evidence"].split("steps after 100")[1]
    assert late.split(";")[0].endswith("per completion (equal compute) n/a (neither arm's |G|² estimate, summed "
                                       "over these steps, is positive: no signal resolved)"), late
    assert f["verdict"] == "inconclusive", f


def test_runs_older_than_the_noise_measurement_get_not_measured_with_the_reason(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "k8", seed, 8, STEADY, extra={"grad_noise": None})
        write_run(runs, "k16", seed, 16, STEADY, noise=noise_rows(seed, 1.0, 5.0, 40.0))
    v, arms = verdicts_of(tmp_path, "r")
    assert v["(f)"]["verdict"] == "not measured"
    assert "the runs of k8 predate the gradient-noise measurement" in v["(f)"]["evidence"]
    assert arms["k8"]["grad_noise"] is None
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| (f) K=16 gives better gradient estimates than K=8 | **not measured** |" in md
    assert "Not measured in: k8." in md


def test_reproducibility_compares_the_spread_across_seeds_and_needs_four_seeds(tmp_path):
    runs = tmp_path / "runs"
    k8_reward, k16_reward = (0.50, 0.51, 0.49, 0.50), (0.30, 0.70, 0.50, 0.90)
    for seed in range(4):
        write_run(runs, "k8", seed, 8, STEADY, reward=k8_reward[seed], entropy_onset=130 if seed == 0 else None)
        write_run(runs, "k16", seed, 16, STEADY, reward=k16_reward[seed], entropy_onset=120)
    g = verdicts_of(tmp_path, "r4")[0]["(g)"]
    assert g["verdict"] == "supported", g
    assert "training reward over the last 20 steps: SD across seeds K=8 0.0082, K=16 0.2582" in g["evidence"]
    assert "held-out hm@4 at the last evaluation: SD across seeds K=8 0.0000, K=16 0.0000" in g["evidence"]
    assert "collapsed in 1 of 4 K=8 seed(s) and 4 of 4 K=16 seed(s)" in g["evidence"]
    # the other way round: K=16 spreads less, refuted
    for arm in ("k8", "k16"):
        shutil.rmtree(runs / arm)
    for seed in range(4):
        write_run(runs, "k8", seed, 8, STEADY, reward=k16_reward[seed])
        write_run(runs, "k16", seed, 16, STEADY, reward=k8_reward[seed])
    assert verdicts_of(tmp_path, "r4b")[0]["(g)"]["verdict"] == "refuted"
    # two seeds: inconclusive, and the evidence says why
    for arm in ("k8", "k16"):
        for seed in (2, 3):
            shutil.rmtree(runs / arm / f"seed{seed}")
    g = verdicts_of(tmp_path, "r2")[0]["(g)"]
    assert g["verdict"] == "inconclusive" and "only 2 seed(s) common to both arms" in g["evidence"]
