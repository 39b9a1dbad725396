r"""report.md and report.html: the tables, the verdicts, the samples, and the page.

report.md is CommonMark with GFM tables; report.html is that markdown rendered by markdown-it-py
with raw HTML off (so any `<...>` in any text comes out as text), plots embedded as base64 data
URIs, one self-contained file.

Text that the report does not write itself (model completions, questions, answers, arm names,
paths, flags) goes through `escape_text` or `code_span` before it enters the markdown, so it can
neither break a table nor turn into markup: markdown's inline syntax characters are
backslash-escaped, a pipe becomes `\|`, and a newline is shown as ⏎.
"""
from __future__ import annotations

import base64
import platform
import re
from pathlib import Path

from rlvr.study.report.runs import (MACHINE_TOLERANCE, METRIC, PROBE_MIN_SECONDS, RETENTION_WINDOW, Arm, entropy_controls, fmt, fmt_ci,
                                    fmt_onsets, passk_difference, passk_ks, ratio, variant_flags)

SAMPLE_CHARS = 300  # a completion longer than this is cut in the report (samples.jsonl has it whole)
NEWLINE_MARK = "⏎"
# markdown's inline syntax, and '_' only where it can open or close emphasis (not inside x86_64)
_INLINE_SYNTAX = re.compile(r"([\\`*\[\]<>&|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def escape_text(text: str, limit: int | None = None) -> str:
    r"""Any text as literal markdown inline text, safe in a table cell: control characters shown as
    \xNN, newlines as ⏎, markdown's inline syntax characters and pipes backslash-escaped; cut
    to `limit` characters with a note of how many more there were."""
    text = str(text)
    cut = ""
    if limit is not None and len(text) > limit:
        cut, text = f" … ({len(text) - limit} more characters)", text[:limit]
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    text = _INLINE_SYNTAX.sub(r"\\\1", text)
    return text.replace("\n", f" {NEWLINE_MARK} ") + cut


def code_span(text: str, in_table: bool = False) -> str:
    r"""`text` as a code span whatever backticks it holds (the fence is longer than any run of
    backticks inside); in a table a pipe is written `\|`, which the table parser turns back."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def _sentence(text: str) -> str:
    """The report's own sentences in a table cell (they may quote arm names or flags): pipes escaped."""
    return " ".join(text.splitlines()).replace("|", "\\|")


def machine_line() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores visible, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def train_command(arm: Arm) -> str:
    """The `rlvr train` flags that reproduce one run of the arm (seed and out left to the user)."""
    from rlvr.config import TrainConfig, to_dict

    defaults = to_dict(TrainConfig())
    parts = []
    for key, value in arm.config.items():
        if key in ("out", "seed", "quiet", "force", "threads") or defaults.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts.append(f"{flag} {value}")
    return "rlvr train " + " ".join(parts)


def _best_cell(n: dict, show_metric: bool) -> str:
    """'0.655 (steps 150, 200)': the mean best value over seeds and each seed's best step."""
    if not any(s is not None for s in n["best_steps"]):
        return "n/a"
    steps = ", ".join("n/a" if s is None else str(s) for s in n["best_steps"])
    metric = f"{', '.join(f'{m} ({split})' for m, split in n['best_metrics'])}: " if show_metric else ""
    return f"{metric}{fmt(n['best_value'], '.3f')} (step{'s' if len(n['best_steps']) > 1 else ''} {steps})"


def _best_note(arms: list[Arm], numbers: dict[str, dict]) -> str:
    kinds = sorted({kind for a in arms for kind in numbers[a.name]["best_metrics"]})
    if not kinds:
        return ("Best: n/a, no run kept a best evaluation (best/best.json is written with --keep-best and "
                "--eval-every).")
    splits = {split for _, split in kinds}
    note = ("Best: the evaluation each run kept in best/ (--keep-best), mean over seeds, with each seed's step. "
            "@last is each run's last evaluation.")
    if "heldout" in splits:
        note += (" Chosen on the same held-out problems it is reported on (--select-split heldout), so the best "
                 "value is biased upward; @last is not.")
    if "validation" in splits:
        note += (" With --select-split validation the value is the validation slice's, chosen there; the held-out "
                 "numbers stay unbiased.")
    return note


def results_table(arms: list[Arm], numbers: dict[str, dict]) -> list[str]:
    kinds = {kind for a in arms for kind in numbers[a.name]["best_metrics"]}
    plain_best = kinds <= {(METRIC, "heldout")}
    lines = [f"| arm | K | {METRIC} @0 | {METRIC} @100 | {METRIC} @last | "
             f"{'best ' + METRIC if plain_best else 'best (metric, split)'} (step per seed) | gain @100 [pts] | "
             "gain @last [pts] | @100 → @last [pts] | entropy retention @100 | retention @last (last step) | "
             "entropy collapse onset (per seed) | reward collapse onset (per seed) | reward, last 20 steps | "
             "zero-signal groups (mean) |",
             "|" + "---|" * 15]
    for arm in arms:
        n = numbers[arm.name]
        lines.append(
            f"| {escape_text(arm.name)} | {arm.config['k']} | {fmt_ci(n['metric_at_0'], 'frac')} | "
            f"{fmt_ci(n['metric_at_100'], 'frac')} | {fmt_ci(n['metric_last'], 'frac')} | "
            f"{_best_cell(n, not plain_best)} | {fmt_ci(n['gain_at_100'])} | {fmt_ci(n['gain_last'])} | "
            f"{fmt_ci(n['late_change'])} | {fmt(n['retention_at_100'])} | {fmt(n['retention_final'])} ({fmt(n['retention_last_step'])}) | {fmt_onsets(n['collapse_onsets'])} | "
            f"{fmt_onsets(n['reward_collapse_onsets'], n['reward_detector_on'])} | {fmt(n['reward_last20'], '.3f')} | "
            f"{fmt(n['zero_signal_mean'])} |")
    detector = next((a.config for a in arms if a.config.get("reward_collapse_ratio")), None)
    reward_rule = (f"training-reward EMA below {detector['reward_collapse_ratio']} × its best for "
                   f"{detector.get('reward_collapse_patience')} steps (--reward-collapse-ratio, --reward-collapse-patience)"
                   if detector else "the training-reward EMA falling below a fraction of its best for a patience")
    lines += ["", _best_note(arms, numbers), "",
              f"@100 → @last: {METRIC} at each run's last evaluation minus at step 100, paired per problem (a fall after "
              "the claims' horizon is the measured training collapse of claim (c)).", "",
              f"Entropy retention: entropy over the first step's (the starting policy's), averaged over the "
              f"{RETENTION_WINDOW} steps up to step 100 and up to the end (what the verdicts judge); in brackets the "
              "last step's alone.", "",
              f"Collapse onsets: the step each seed's detector fixes as the onset; entropy: EMA below --collapse-ratio × "
              f"the step-0 entropy for --collapse-patience steps; reward: {reward_rule}. 'none' = watched, never fired; "
              "'off' = no reward detector in that run (turned off, or a run older than it).", ""]
    return lines


def _ratio_ci(r: dict | None) -> str:
    text = "n/a" if r is None or r["value"] is None else f"{r['value']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
    return text + (" †" if r and r.get("cross_machine_seeds") else "")  # seeds left out by the machine check


def cost_table(arms: list[Arm], numbers: dict[str, dict], summary: dict) -> list[str]:
    first = numbers[arms[0].name]
    cis = {e["name"]: e for e in summary["arms"]}
    lines = ["| arm | K | s/step (median) | × first (95% CI) | training s per run | peak MiB | × first | "
             "MiB a step adds | × first (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, arm in enumerate(arms):
        n, e = numbers[arm.name], cis.get(arm.name, {})
        time_ratio = "1.00" if i == 0 else _ratio_ci(e.get("step_time_ratio_ci"))
        memory_ratio = "1.00" if i == 0 else _ratio_ci(e.get("step_memory_ratio_ci"))
        lines.append(
            f"| {escape_text(arm.name)} | {arm.config['k']} | {fmt(n['step_seconds_median'], '.3f')} | "
            f"{time_ratio} | {fmt(n['train_seconds'], '.1f')} | "
            f"{fmt(n['peak_memory_mib'], '.0f')} | {fmt(ratio(n['peak_memory_mib'], first['peak_memory_mib']))} | "
            f"{fmt(n['step_memory_mib'], '.0f')} | {memory_ratio} |")
    lines += ["", "Peak memory is the process's resident memory during a training step (evaluation excluded), "
                  f"including ~{fmt(first['memory_before_step_mib'], '.0f')} MiB (first arm) already in use before the "
                  "step: runtime, model and optimizer. The ratios' 95% CIs are paired by seed (a seed's runs ran one "
                  "after the other) and resampled over seeds and then steps: the ratio of the mean per-run medians.", ""]
    crossed = [(e["name"], e["step_time_ratio_ci"]["cross_machine_seeds"]) for e in summary["arms"]
               if e.get("step_time_ratio_ci") and e["step_time_ratio_ci"].get("cross_machine_seeds")]
    lines += [f"Machine check: every run's step-0 evaluation is the same work within a seed, so its wall time (the runs "
              f"table) times the machine. † = seeds left out of the step-time ratio because the two runs' step-0 "
              f"evaluations differ by more than {MACHINE_TOLERANCE:g}× (machines of different speed): "
              + "; ".join(f"{escape_text(name)}: seed(s) {', '.join(map(str, seeds))}" for name, seeds in crossed) + ".", ""
              ] if crossed else []
    return lines


def noise_section(summary: dict) -> list[str]:
    """The gradient's noise per arm (grad/* in metrics.jsonl), over all the steps that measured it."""
    entries = [e for e in summary["arms"] if e.get("grad_noise")]
    if not entries:
        return ["## Gradient noise per arm", "",
                "Not measured: these runs predate the gradient-noise measurement (no grad/noise in metrics.jsonl), "
                "so verdict (f) is not judged.", ""]
    lines = ["## Gradient noise per arm", "",
             "Over every step that measured it: |G|² and tr Σ (per prompt) are the means of the per-step unbiased "
             "estimates; B_simple = Σ tr Σ / Σ |G|² in prompts (and ×K in completions); the intra-prompt share is "
             "(tr Σ_intra/K)/tr Σ; SNR = B·|G|²/tr Σ at the arm's B prompts per step. B_simple well above B: more "
             "samples per step still cut the noise nearly in proportion; below B: they mostly buy nothing "
             "(docs/metrics.md, Gradient noise).", "",
             "| arm | K | B | steps measured | \\|G\\|² | tr Σ per prompt | B_simple [prompts] | B_simple [completions] | "
             "intra-prompt share | SNR at B |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        n = e["grad_noise"]
        lines.append(f"| {escape_text(e['name'])} | {n['group_size']} | {n['prompts_per_step']} | {n['steps']} | "
                     f"{n['signal']:.4g} | {n['noise']:.4g} | {fmt(n['noise_scale'], '.1f')} | "
                     f"{fmt(n['noise_scale_per_completion'], '.0f')} | {fmt(n['intra_share'])} | {fmt(n['snr'])} |")
    missing = [e["name"] for e in summary["arms"] if not e.get("grad_noise")]
    if missing:
        lines += ["", "Not measured in: " + escape_text(", ".join(missing)) + "."]
    return lines + [""]


def passk_section(arms: list[Arm], numbers: dict[str, dict]) -> list[str]:
    """--passk-eval-samples: pass@k of the base model and at the end, and the change at the largest k."""
    ks = passk_ks(arms)
    if not ks:
        return []
    top = ks[-1]
    samples = sorted({row["n_samples"] for a in arms for r in a.usable for row in r.passk.values()})
    plain16 = next((a for a in arms if a.config["k"] == 16 and not a.meta.get("variant")
                    and not entropy_controls(a.config)), None)
    lines = [f"## pass@k up to k = {top}: the base model and the end", "",
             f"The wide evaluations of --passk-eval-samples ({', '.join(map(str, samples))} samples per problem, the same "
             f"held-out problems) at step 0, the base model, and at each run's end. A policy can gain pass@1 while "
             f"losing pass@k at large k, problems it no longer reaches at all (Yue et al. 2025); the last columns are "
             f"pass@{top} at the end minus the base model, and minus plain K=16, in points, paired per problem and seed.",
             "",
             "| arm | " + " | ".join(f"pass@{k} base | pass@{k} end" for k in ks)
             + f" | pass@{top} end − base [pts] | pass@{top} end − plain K=16 [pts] |",
             "|" + "---|" * (3 + 2 * len(ks))]
    for arm in arms:
        n = numbers[arm.name]
        cells = [f"{fmt_ci(n['passk_base'].get(k), 'frac')} | {fmt_ci(n['passk_last'].get(k), 'frac')}" for k in ks]
        versus = passk_difference(arm, plain16, top) if plain16 is not None and arm is not plain16 else None
        lines.append(f"| {escape_text(arm.name)} | " + " | ".join(cells)
                     + f" | {fmt_ci(n['passk_vs_base'].get(top))} | {fmt_ci(versus)} |")
    return lines + [""]


def _sample_cells(row: dict | None) -> str:
    if row is None:
        return "n/a | n/a"
    completion = escape_text(row.get("completion", ""), SAMPLE_CHARS) or "(empty)"
    extracted = "none" if row.get("extracted") is None else escape_text(row["extracted"], SAMPLE_CHARS)
    score = row.get("score")
    return f"{completion} | {extracted}, {'n/a' if score is None else format(score, '.2f')}"


def samples_section(arms: list[Arm]) -> list[str]:
    """Per arm (its first seed), the same held-out problems at the first and the last evaluation, side by side."""
    lines = ["## Samples: the same held-out problems at the first and the last evaluation", "",
             "Each arm's first seed; the problems --eval-show picks (the first held-out ones), the greedy completion "
             "and one sampled completion of each, with the extracted answer and its score. Model text is shown "
             f"literally: {NEWLINE_MARK} marks a newline, and a completion longer than {SAMPLE_CHARS} characters is cut "
             "(the run's samples.jsonl holds it whole).", ""]
    for arm in arms:
        run = arm.usable[0]
        lines += [f"### {escape_text(arm.name)} (seed {run.seed})", ""]
        rows = [r for r in run.samples if "step" in r and "id" in r]
        if not rows:
            lines += ["n/a: this run has no samples.jsonl (a run older than it, or --eval-show 0).", ""]
            continue
        first, last = min(r["step"] for r in rows), max(r["step"] for r in rows)
        at = {(r["step"], r["id"], r.get("kind")): r for r in rows}
        problem = {r["id"]: r for r in rows}
        problems = list(dict.fromkeys(r["id"] for r in rows if r["step"] == first))
        kinds = [k for k in ("greedy", "sampled") if any(r.get("kind") == k for r in rows)]
        steps = [first] if first == last else [first, last]
        header = "| question | answer | kind | " + " | ".join(
            f"step {s} completion | step {s} extracted, score" for s in steps) + " |"
        lines += [header, "|" + "---|" * (3 + 2 * len(steps))]
        for pid in problems:
            for kind in kinds:
                cells = [at.get((s, pid, kind)) for s in steps]
                lines.append(f"| {escape_text(problem[pid].get('question', ''), SAMPLE_CHARS)} | "
                             f"{escape_text(problem[pid].get('answer', ''), SAMPLE_CHARS)} | {kind} | "
                             + " | ".join(_sample_cells(c) for c in cells) + " |")
        if first == last:
            lines += ["", f"Only step {first} was evaluated."]
        lines.append("")
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def runs_section(log: list[dict]) -> list[str]:
    """Which run ran when, on which commit, and its wall time (from events.jsonl's time stamps)."""
    lines = ["## Runs: when, on which commit, how long", "",
             "Wall time is the sum of a run's parts (a run resumed after a kill ran in several), each "
             "from its start to its last event. Step-0 eval: the wall time of the run's step-0 evaluation, the same "
             "work in every run of a seed: the machine's speed when the run began (n/a: untimed, or under "
             f"{PROBE_MIN_SECONDS:g} s).", "",
             "| arm | seed | status | last step | parts | started | ended | wall time | step-0 eval | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in log:
        probe = "n/a" if r.get("probe_seconds") is None else f"{r['probe_seconds']:.0f} s"
        lines.append(f"| {escape_text(r['arm'])} | {r['seed']} | {r['status']} | {r['last_step']} | {r['parts']} | "
                     f"{r['started'] or 'n/a'} | {r['ended'] or 'n/a'} | {_duration(r['wall_seconds'])} | {probe} | "
                     f"{code_span(r['commit'] or 'unknown', in_table=True)} |")
    return lines + [""]


def markdown(arms: list[Arm], numbers: dict[str, dict], summary: dict, plots: list[Path], context: dict) -> str:
    lines = [f"# rlvr K comparison: {escape_text(', '.join(a.name for a in arms))}", ""]
    if context.get("command"):
        lines += [f"Command: {code_span(context['command'])}", ""]
    jobs = context.get("jobs", 1)
    config = arms[0].config
    lines += [f"Machine: {escape_text(context.get('machine') or machine_line())}"
              + (f". Runs went {jobs} at a time, so step times include their contention for the cores." if jobs > 1 else ""),
              "",
              f"Task {code_span(config['task'])}, model {code_span(config['model'])}, {summary['steps']} steps, "
              f"{summary['seeds']} seed(s) per arm, matched by **{summary['match']}** "
              f"({'every arm samples the same prompts per step' if summary['match'] == 'prompts' else 'every arm generates the same number of samples per step'}). "
              f"Numbers across seeds are means; CIs are 95% over seeds and held-out problems; gains are paired against "
              f"each run's own step 0, in points of {METRIC}.", ""]
    problems = {r.evals[min(r.evals)]["n_problems"] for a in arms for r in a.usable if r.evals}
    if problems:
        lines += [f"Held-out problems per evaluation: {', '.join(map(str, sorted(problems)))}.", ""]
    bad = [f"{a.name} seed {r.seed}: {r.status}" for a in arms for r in a.runs if r.status not in ("finished", "stopped")]
    if bad:
        lines += ["**Runs that did not finish:** " + escape_text("; ".join(bad)) + " (their rows cover the steps they reached).", ""]
    if context.get("unreadable"):
        lines += ["**Runs that failed before writing anything:** " + escape_text("; ".join(context["unreadable"])), ""]

    lines += ["## Verdicts on the claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    for v in summary["verdicts"]:
        lines.append(f"| {_sentence(v['claim'])} | **{v['verdict']}** | {_sentence(v['evidence'])} |")
    if summary.get("reach"):
        lines += ["", f"**Finding beyond the claims, {summary['reach']['finding']}:** "
                      f"{_sentence(summary['reach']['statement'])} (section pass@k below)"]
    lines += ["", "## Results per arm", ""] + results_table(arms, numbers)
    lines += passk_section(arms, numbers)
    lines += noise_section(summary)
    lines += ["## Cost per arm", ""] + cost_table(arms, numbers, summary)

    lines += ["## Effective settings per arm", "",
              "The confounders that published K comparisons disagree through, as each arm ran them.", "",
              "| arm | variant | K | prompts/step | samples/step generated / trained (measured mean) | lr | lr scaling | loss agg | updates/step | temperature | advantage | entropy control |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        c = arm.config
        control = ", ".join(entropy_controls(c)) or "none"
        lines.append(f"| {escape_text(arm.name)} | {code_span(variant_flags(arm, arms[0]) or '-', in_table=True)} | "
                     f"{c['k']} | {c['prompts_per_step']} | "
                     f"{fmt(numbers[arm.name]['generated_per_step'], '.0f')} / {fmt(numbers[arm.name]['trained_per_step'], '.0f')} | "
                     f"{c['lr']:g} | {escape_text(arm.meta.get('lr_scaling', 'none'))} | {c['loss_agg']} | "
                     f"{c['updates_per_step']} | {c['temperature']} | {c['advantage']} | {escape_text(control)} |")
    lines += ["", "Each arm's runs are reproduced by (add `--seed N --out DIR`):", ""]
    lines += [f"- {escape_text(arm.name)}: {code_span(train_command(arm))}" for arm in arms]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += [""] + runs_section(summary["runs"])
    lines += samples_section(arms)
    runs = ", ".join(sorted({str(r.path) for a in arms for r in a.runs}))
    lines += [f"Summary for scripts: `summary.json`. Runs: {escape_text(runs)}.", ""]
    return "\n".join(lines)


def _markdown_parser():
    from markdown_it import MarkdownIt

    # commonmark + GFM tables; raw HTML off, so '<script>' anywhere in the markdown is text
    return MarkdownIt("commonmark", {"html": False}).enable("table")


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px;"
         "vertical-align:top}th{background:#f3f3f3;text-align:left}"
         # the samples tables (each right after its arm's h3) may hold long unbroken model text
         "h3+table td{overflow-wrap:anywhere;min-width:5.5em}"
         "code{background:#f5f5f5;padding:0 3px}img{width:49%;min-width:420px}")


def to_html(md: str, plot_dir: Path) -> str:
    """A self-contained page from the report's markdown: rendered by markdown-it-py with raw HTML
    off (every text escaped), images under plots/ embedded as base64 PNG data URIs."""
    parser = _markdown_parser()
    tokens = parser.parse(md)
    for token in tokens:
        for child in token.children or []:
            src = child.attrGet("src") if child.type == "image" else None
            if isinstance(src, str) and src.startswith("plots/") and (plot_dir / src[len("plots/"):]).is_file():
                data = base64.b64encode((plot_dir / src[len("plots/"):]).read_bytes()).decode()
                child.attrSet("src", f"data:image/png;base64,{data}")
    body = parser.renderer.render(tokens, parser.options, {})
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rlvr report</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")
