"""The report's plots (matplotlib, Agg): entropy beside held-out hm@4 (the overview), per-step
curves per arm with a band over seeds, held-out hm@4 with CIs, and step time / peak memory per arm."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlvr.study.report.runs import METRIC, Arm, metric_at

ROLLING = 10  # steps in the rolling mean of noisy per-step curves


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < 2:
        return values
    kernel = np.ones(min(window, values.size))
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def _across_seeds(arm: Arm, key: str, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps, mean, min and max across seeds of a per-step series (each seed smoothed first)."""
    curves = [r.series(key) for r in arm.usable]
    curves = [(s, _rolling(v, window)) for s, v in curves if s.size]
    if not curves:
        return None
    length = min(s.size for s, _ in curves)
    stack = np.stack([v[:length] for _, v in curves])
    return curves[0][0][:length], stack.mean(axis=0), stack.min(axis=0), stack.max(axis=0)


def make_plots(arms: list[Arm], numbers: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seeds = max(len(a.usable) for a in arms)
    band = f"line: mean of {seeds} seeds; band: min-max across seeds" if seeds > 1 else "one seed"
    paths = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    def curve(ax, key, ylabel, window, title):
        """A per-step metric per arm: mean over seeds, min-max band, collapse onsets marked."""
        for i, arm in enumerate(arms):
            data = _across_seeds(arm, key, window)
            if data is None:
                continue
            steps, mean, lo, hi = data
            ax.plot(steps, mean, color=colors[i % len(colors)], label=arm.name, lw=1.5)
            if len(arm.usable) > 1:
                ax.fill_between(steps, lo, hi, color=colors[i % len(colors)], alpha=0.18, lw=0)
        marks = {"entropy/mean": ("collapse_onsets", "collapse onset (a seed)"),
                 "reward/mean": ("reward_collapse_onsets", "reward-collapse onset (a seed)")}
        if key in marks:
            field, label = marks[key]
            onsets = {o for a in arms for o in numbers[a.name][field] if o is not None}
            for i, o in enumerate(sorted(onsets)):
                ax.axvline(o, color="0.4", ls=":", lw=1, label=label if i == 0 else None)
        ax.set(xlabel="training step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend()

    def held_out(ax, title):
        """Held-out hm@4 per arm at each evaluation step, with its 95% CI."""
        for i, arm in enumerate(arms):
            steps = sorted(set.intersection(*[set(r.evals) for r in arm.usable])) if arm.usable else []
            points = [(s, metric_at(arm, s)) for s in steps]
            points = [(s, m) for s, m in points if m is not None]
            if not points:
                continue
            xs = np.array([s for s, _ in points], dtype=float)
            ys = np.array([m["value"] for _, m in points])
            err = np.array([[m["value"] - m["ci"][0], m["ci"][1] - m["value"]] for _, m in points]).T
            ax.errorbar(xs + (i - (len(arms) - 1) / 2) * 0.6, ys, yerr=err, color=colors[i % len(colors)],
                        label=arm.name, marker="o", ms=3, capsize=2, lw=1.5)
        ax.set(xlabel="training step", ylabel=f"held-out {METRIC} [fraction solved]", title=title)
        ax.grid(alpha=0.3)
        ax.legend()

    # the two curves the K question turns on, side by side: what entropy does, and what it costs
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    curve(ax1, "entropy/mean", "policy entropy [nats/token]", 1, f"Policy entropy (exact)\n{band}")
    held_out(ax2, f"Held-out {METRIC}\nerror bars: 95% CI over seeds and problems")
    save(fig, "entropy_hm4.png")

    curves = [("entropy/mean", "entropy.png", "policy entropy [nats/token]", 1, "Policy entropy (exact, at the sampling temperature)"),
              ("reward/mean", "reward.png", "mean reward [0-1]", ROLLING, f"Training reward ({ROLLING}-step rolling mean)"),
              ("reward/zero_signal_frac", "zero_signal.png", "groups with no signal [fraction]", ROLLING,
               f"Zero-signal groups: all K rewards equal ({ROLLING}-step rolling mean)"),
              ("diversity/answers", "diversity.png", "distinct answers per group / K", ROLLING,
               f"Answer diversity ({ROLLING}-step rolling mean)")]
    for key, name, ylabel, window, title in curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        curve(ax, key, ylabel, window, f"{title}\n{band}")
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7, 4))
    held_out(ax, f"Held-out {METRIC} (error bars: 95% CI over seeds and problems)")
    save(fig, "eval_hm4.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    names = [a.name for a in arms]
    secs = np.array([numbers[a]["step_seconds_median"] or 0.0 for a in names])
    peak = np.array([numbers[a]["peak_memory_mib"] or 0.0 for a in names])
    base = np.array([peak[i] - (numbers[a]["step_memory_mib"] or 0.0) for i, a in enumerate(names)])
    bar_colors = [colors[i % len(colors)] for i in range(len(names))]
    ax1.bar(names, secs, color=bar_colors)
    ax1.set(ylabel="median step time [s]", title="Step time (rollouts + rewards + update)")
    ax2.bar(names, base, color="0.75", label="in use before the step (runtime, model, optimizer)")
    ax2.bar(names, peak - base, bottom=base, color=bar_colors, label="added during the step")
    ax2.set(ylabel="peak resident memory [MiB]", title="Peak memory of a training step")
    ax2.legend(fontsize=7, loc="lower right")
    for x in range(len(names)):
        ax1.annotate(f"{secs[x] / secs[0]:.2f}×" if secs[0] else "", (x, secs[x]), ha="center", va="bottom", fontsize=8)
        added = (peak[x] - base[x]) / (peak[0] - base[0]) if peak[0] > base[0] else float("nan")
        ax2.annotate(f"{peak[x] / peak[0]:.2f}× total\n{added:.2f}× added" if peak[0] else "", (x, peak[x]),
                     ha="center", va="bottom", fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
        ax.grid(alpha=0.3, axis="y")
        ax.margins(y=0.15)
    save(fig, "cost.png")
    return paths

