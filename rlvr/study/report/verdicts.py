"""The verdicts on the seed's claims (a)-(g): fixed rules, documented in docs/compare.md.

Each claim gets supported / refuted / inconclusive and the numbers that decided it. The rules are
the part of the report people argue about, so they live here, apart from tables and plots, and
change only together with docs/compare.md ("The verdicts").

Two detectors feed them (TERMS.md): the entropy-collapse detector (`collapse` events) and the
reward-collapse detector (`reward_collapse` events: the training-reward EMA below
--reward-collapse-ratio × its best for --reward-collapse-patience steps). A reward collapse is a
training collapse too, so it counts where a claim is about training collapsing or staying stable
((c), (e)); claim (b) is about entropy alone and only mentions it.

"Training collapse" in (c) is a measured loss, never entropy alone: held-out hm@4 falling from
step 100 to the end, pass@k at the largest k (--passk-eval-samples) falling below the base model,
each paired per problem with a CI over seeds and problems, or the reward detector. The cost
claim (d) is judged on the CIs of its ratios (`cost_ratio`), so timing noise makes it
inconclusive rather than flipping it.
"""
from __future__ import annotations

from rlvr.study.report.runs import (MACHINE_TOLERANCE, MIDPOINT, RETENTION_WINDOW, Arm, arm_difference,
                                    collapsed_share, cost_ratio, fmt, fmt_ci, has_entropy_control, measures_noise,
                                    noise_comparison, passk_difference, passk_ks, ratio, reward_difference,
                                    spread_ratio, variant_flags)

LOSS_MARGIN = 5.0  # points: a CI whose lower end lies above −LOSS_MARGIN rules a training collapse out
COST_BAND = (1.5, 2.5)  # "about 2×"
MIN_SPREAD_SEEDS = 4  # claim (g): fewer seeds than this per arm and an SD across seeds is too unstable to judge
NOT_MEASURED = "not measured"  # a verdict for runs that lack the measurement a claim needs


def is_plain(arm: Arm, k: int) -> bool:
    return arm.config["k"] == k and not arm.meta.get("variant") and not has_entropy_control(arm.config)


def _added_memory(n: dict) -> float | None:
    """Peak memory of a step minus the memory in use before it: what the step itself needs."""
    return n["step_memory_mib"]


def _machine_check(t: dict | None) -> str:
    """What the step-0 evaluations (the same work in both arms of a seed) say of the machines under a step-time ratio."""
    if t is None:
        return ""
    text = ""
    if t.get("machine_ratio"):
        lo, hi = t["machine_ratio"]
        text += (f"; machine check: K=16's step-0 evaluations took {lo:.2f}-{hi:.2f}× as long as K=8's "
                 "(the same work, so the same machine speed within "
                 f"{MACHINE_TOLERANCE:g}×)")
    if t.get("cross_machine_seeds"):
        text += (f"; seed(s) {', '.join(map(str, t['cross_machine_seeds']))} left out of the step-time ratio: their "
                 f"step-0 evaluations differ by more than {MACHINE_TOLERANCE:g}×, so their runs ran on machines of "
                 "different speed")
    return text


def _onsets(n: dict) -> str:
    return "[" + ", ".join("none" if o is None else str(o) for o in n["collapse_onsets"]) + "]"


def _reward_onsets(n: dict) -> str:
    """'[none, 212]' per seed; 'off' for a seed no reward-collapse detector watched."""
    return "[" + ", ".join("off" if not on else "none" if o is None else str(o)
                           for o, on in zip(n["reward_collapse_onsets"], n["reward_detector_on"])) + "]"


def _reward_fired(n: dict) -> tuple[int, bool]:
    """(seeds whose reward-collapse detector fired, whether that is at least half the seeds)."""
    fired = sum(o is not None for o in n["reward_collapse_onsets"])
    return fired, fired > 0 and fired * 2 >= (len(n["reward_collapse_onsets"]) or 1)


def _reward_detector(arm: Arm) -> str:
    c = arm.config
    if not c.get("reward_collapse_ratio"):
        return "reward-collapse detector off or not recorded in these runs"
    return (f"reward detector: training-reward EMA below {c['reward_collapse_ratio']} × its best for "
            f"{c.get('reward_collapse_patience')} steps")


def _stable(n: dict, collapse_ratio: float) -> tuple[bool, bool]:
    """(steady, collapsed): steady = the collapse detector (TERMS.md) fired in no seed and the
    seeds keep on average ≥ 0.5 of their step-0 entropy at the end; collapsed = the detector
    fired in at least half the seeds or the mean retention ended below the collapse ratio."""
    seeds = len(n["collapse_onsets"]) or 1
    fired = sum(o is not None for o in n["collapse_onsets"])
    steady = fired == 0 and n["retention_final"] is not None and n["retention_final"] >= 0.5
    collapsed = fired * 2 >= seeds and fired > 0 or (n["retention_final"] is not None and n["retention_final"] < collapse_ratio)
    return steady, collapsed


def _retention_end(n: dict) -> str:
    """Retention at the end as the verdicts judge it (mean over the last RETENTION_WINDOW steps), per
    seed, and the last step's alone beside it."""
    return (f"{fmt(n['retention_final'])} (per seed {[fmt(r) for r in n['retention_final_per_seed']]}; mean of the "
            f"last {RETENTION_WINDOW} steps; the last step alone {fmt(n['retention_last_step'])})")


def _largest_k(n: dict) -> int | None:
    ks = [k for k, v in n["passk_vs_base"].items() if v is not None]
    return max(ks) if ks else None


def training_loss(n: dict) -> tuple[bool, bool, str]:
    """(lost, ruled_out, evidence): a measured training collapse. lost = a CI entirely below 0
    (hm@4 from step 100 to the end, or pass@k_max at the end against the base model) or the
    reward detector in at least half the seeds; ruled_out = something was measured, every
    measured CI lies above −LOSS_MARGIN points, and no reward collapse fired."""
    parts, lost, ruled = [], False, []
    late = n["late_change"]
    if late is not None:
        parts.append(f"held-out hm@4 from step {MIDPOINT} to the end {fmt_ci(late)}")
        lost |= late["ci"][1] < 0
        ruled.append(late["ci"][0] > -LOSS_MARGIN)
    k = _largest_k(n)
    if k is not None:
        d = n["passk_vs_base"][k]
        parts.append(f"pass@{k} at the end minus the base model {fmt_ci(d)}")
        lost |= d["ci"][1] < 0
        ruled.append(d["ci"][0] > -LOSS_MARGIN)
    fired, reward_collapsed = _reward_fired(n)
    lost |= reward_collapsed
    ruled_out = bool(ruled) and all(ruled) and not fired
    evidence = "; ".join(parts) if parts else "no measured loss available (needs evaluations after step " \
        f"{MIDPOINT}, or --passk-eval-samples)"
    return lost, ruled_out, evidence


def _reward_note(n: dict) -> str:
    """For a claim about entropy alone: a reward collapse, when one happened, is mentioned, not judged."""
    fired, _ = _reward_fired(n)
    if not fired:
        return ""
    return (f"; the reward-collapse detector fired in {fired} of {len(n['reward_collapse_onsets'])} seed(s) "
            f"(onsets {_reward_onsets(n)}), which this claim about entropy does not judge")


def _paired_reward_diffs(n: dict, base: dict) -> str:
    """'difference per seed -0.015, +0.004': the arm's last-20-step reward minus the base arm's, seed by seed."""
    seeds = [s for s in n["reward_last20_by_seed"] if s in base["reward_last20_by_seed"]]
    if not seeds:
        return "no common seeds"
    diffs = [n["reward_last20_by_seed"][s] - base["reward_last20_by_seed"][s] for s in seeds]
    return "difference per seed " + ", ".join(f"{d:+.3f}" for d in diffs)


def verdicts(arms: list[Arm], numbers: dict[str, dict]) -> list[dict]:
    """The seed's claims (a)-(g), each supported / refuted / inconclusive (or not measured) with its numbers."""
    k8 = next((a for a in arms if is_plain(a, 8)), None)
    k16 = next((a for a in arms if is_plain(a, 16)), None)
    controls = [a for a in arms if a.config["k"] == 16 and a is not k16 and has_entropy_control(a.config)]
    out = []

    def add(claim, verdict, evidence):
        out.append({"claim": claim, "verdict": verdict, "evidence": evidence})

    claim = "(a) K=8 gains at least 10 points of HM@4 within the first 100 steps"
    gain = numbers[k8.name]["gain_at_100"] if k8 else None
    if gain is None:
        add(claim, "inconclusive", "no K=8 arm with evaluations at steps 0 and 100 (needs --steps ≥ 100 and "
                                   "--eval-every dividing 100)")
    else:
        lo, hi = gain["ci"]
        verdict = "supported" if lo >= 10 else "refuted" if hi < 10 else "inconclusive"
        add(claim, verdict, f"K=8 hm@4 gain at step 100: {fmt_ci(gain)} (95% CI over {len(k8.usable)} seed(s) and "
                            f"the held-out problems); supported needs the whole CI ≥ 10, refuted the whole CI < 10")

    collapse_ratio = (k8 or k16 or arms[0]).config.get("collapse_ratio", 0.3)
    claim = "(b) K=8 policy entropy stays steady"
    if k8 is None:
        add(claim, "inconclusive", "no plain K=8 arm in this comparison")
    elif min(numbers[k8.name]["steps_done"]) < MIDPOINT:
        add(claim, "inconclusive", f"the K=8 runs stop before step {MIDPOINT}; steadiness over the claim's horizon "
                                   "cannot be judged")
    else:
        n = numbers[k8.name]
        steady, collapsed = _stable(n, collapse_ratio)
        add(claim, "supported" if steady else "refuted" if collapsed else "inconclusive",
            f"K=8 entropy retention at step 100 {fmt(n['retention_at_100'])}, at the end {_retention_end(n)}; "
            f"collapse detector fired in "
            f"{sum(o is not None for o in n['collapse_onsets'])} of {len(n['collapse_onsets'])} seed(s). Steady = no "
            f"collapse in any seed and mean retention ≥ 0.5 of the step-0 entropy; refuted = collapse in ≥ half the seeds or mean "
            f"retention < {collapse_ratio}" + _reward_note(n))

    claim = "(c) K=16 policy entropy decays after ~100 steps and training collapses"
    if k16 is None:
        add(claim, "inconclusive", "no plain K=16 arm in this comparison")
    else:
        n = numbers[k16.name]
        steady, collapsed = _stable(n, collapse_ratio)
        late = max(n["steps_done"], default=0) > MIDPOINT
        reward_fired, _ = _reward_fired(n)
        lost, ruled_out, loss_evidence = training_loss(n)
        evidence = (f"K=16 entropy retention at step 100 {fmt(n['retention_at_100'])}, at the end "
                    f"{_retention_end(n)}; collapse onsets per seed {_onsets(n)} (detector: EMA below "
                    f"{collapse_ratio} × step-0 for {k16.config.get('collapse_patience')} steps); reward-collapse onsets "
                    f"per seed {_reward_onsets(n)} ({_reward_detector(k16)}); training collapse, measured: {loss_evidence}")
        rule = (f"; supported = entropy collapse in ≥ half the seeds (or entropy not steady) with a measured loss (a "
                f"CI below 0, or reward collapse in ≥ half the seeds); refuted = entropy steady and no reward collapse, "
                f"or a collapse of entropy alone with every loss above −{LOSS_MARGIN:g} points ruled out by its CI; "
                "otherwise inconclusive")
        if not late:
            add(claim, "inconclusive", evidence + f"; the runs stop by step {MIDPOINT}, so a later decay cannot be seen")
        elif lost and not steady:
            add(claim, "supported", evidence + rule)
        elif steady and not reward_fired:
            add(claim, "refuted", evidence + rule)
        elif collapsed and ruled_out:
            add(claim, "refuted", evidence + rule + " (entropy collapsed, training did not)")
        elif steady:
            add(claim, "inconclusive", evidence + rule + f" (training reward collapsed in {reward_fired} seed(s) while "
                                                         "entropy stayed steady: a collapse, but not the entropy decay "
                                                         "the claim names)")
        elif collapsed:
            add(claim, "inconclusive", evidence + rule + " (entropy collapsed; a loss is neither measured nor ruled out)")
        else:
            add(claim, "inconclusive", evidence + rule + " (entropy fell without a detected collapse)")

    claim = "(d) K=16 costs about twice the memory and compute per step of K=8"
    if k8 is None or k16 is None:
        add(claim, "inconclusive", "needs plain K=8 and K=16 arms")
    else:
        a, b = numbers[k8.name], numbers[k16.name]
        m = ratio(b["peak_memory_mib"], a["peak_memory_mib"])
        t, added = cost_ratio(k8, k16, "step_seconds"), cost_ratio(k8, k16, "step_memory")
        same_prompts = k8.config["prompts_per_step"] == k16.config["prompts_per_step"]
        low, high = COST_BAND

        def ci(r):
            return "n/a" if r is None or r["value"] is None else f"{r['value']:.2f}× [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"

        evidence = (f"K=16/K=8 step time {ci(t)} (median {fmt(b['step_seconds_median'], '.3f')} vs "
                    f"{fmt(a['step_seconds_median'], '.3f')} s); memory added by a step {ci(added)} "
                    f"({fmt(_added_memory(b), '.0f')} vs {fmt(_added_memory(a), '.0f')} MiB) on top of "
                    f"~{fmt(a['memory_before_step_mib'], '.0f')} MiB in use before any step at every K (runtime, model, "
                    f"optimizer), so total peak {fmt(m)}×; 95% CIs paired by seed over "
                    f"{t['seeds'] if t else 0} seed(s) and their steps; 'about 2×' = within {low}-{high}×: "
                    "supported when both CIs lie inside, refuted when either lies outside, otherwise inconclusive"
                    + _machine_check(t))
        inside = lambda r: r is not None and r["ci"] is not None and low <= r["ci"][0] and r["ci"][1] <= high  # noqa: E731
        outside = lambda r: r is not None and r["ci"] is not None and (r["ci"][1] < low or r["ci"][0] > high)  # noqa: E731
        if not same_prompts:
            add(claim, "inconclusive", evidence + "; the arms do not sample the same prompts per step (--match samples), "
                                                  "so per-step cost is not the K=16 vs K=8 cost of the claim")
        elif inside(t) and inside(added):
            add(claim, "supported", evidence)
        elif outside(t) or outside(added):
            add(claim, "refuted", evidence)
        else:
            add(claim, "inconclusive", evidence + ("; a CI straddles a boundary of the band" if t and added else
                                                   "; a ratio could not be measured"))

    claim = "(e) an entropy control keeps K=16 stable"
    if not controls or k16 is None:
        add(claim, "inconclusive", "needs a plain K=16 arm and a K=16 arm with an entropy control")
    else:
        judged = [_judge_control(control, k16, arms, numbers, collapse_ratio) for control in controls]
        order = ("supported", "inconclusive", "refuted")
        verdict = min((v for v, _ in judged), key=order.index)
        add(claim, verdict, " || ".join(e for _, e in judged) + (
            "; with several controls the claim is supported when one is, refuted when all are" if len(judged) > 1 else ""))
    out.append(gradient_estimates(k8, k16))
    out.append(reproducibility(k8, k16))
    return out


def _ratio(r: dict | None) -> str:
    """'1.83 [1.41, 2.40]' (∞ for an infinite end), 'n/a' without a value."""
    def one(x):
        return "∞" if x == float("inf") else "−∞" if x == float("-inf") else f"{x:.2f}"

    if r is None or r.get("value") is None:
        return "n/a"
    return one(r["value"]) + ("" if not r.get("ci") else f" [{one(r['ci'][0])}, {one(r['ci'][1])}]")


def _side(r: dict | None) -> str:
    """Where a ratio's 95% CI lies against 1: 'above', 'below' or 'holds 1' (also without a CI)."""
    if r is None or not r.get("ci") or r.get("value") is None:
        return "holds 1"
    return "above" if r["ci"][0] > 1 else "below" if r["ci"][1] < 1 else "holds 1"


NO_SIGNAL = " (neither arm's |G|² estimate, summed over these steps, is positive: no signal resolved)"


def _why_no_snr(c: dict) -> str:
    """NO_SIGNAL where a noise comparison has no SNR ratio, else nothing."""
    return NO_SIGNAL if c["snr"] is None or c["snr"].get("value") is None else ""


def _window_text(name: str, c: dict) -> str:
    share = ", ".join(f"K={k} {fmt(v)}" for k, v in zip((8, 16), c["intra_share"]))
    return (f"{name} ({c['seeds']} seed(s), {c['steps']} paired steps): gradient SNR K=16/K=8 at equal prompts "
            f"per step {_ratio(c['snr'])}, per completion (equal compute) {_ratio(c['snr_per_completion'])}{_why_no_snr(c)}; "
            f"per-prompt noise tr Σ K=16/K=8 {_ratio(c['noise'])}; intra-prompt share of tr Σ {share}")


def _judge_windows(windows: list, key: str) -> str:
    sides = [_side(c[key]) for _, c in windows]
    if "below" in sides:
        return "refuted"
    return "supported" if sides and all(side == "above" for side in sides) else "inconclusive"


def gradient_estimates(k8: Arm | None, k16: Arm | None) -> dict:
    """Claim (f), docs/compare.md: the gradient SNR of plain K=16 over plain K=8 at equal prompts
    per step, over steps 1-100 and after 100, paired by seed and step; the same per completion
    (equal compute) as `at_equal_compute`; and after K=16's entropy collapse for the claim's
    second half. "not measured" when a plain arm's runs lack the measurement."""
    claim = "(f) K=16 gives better gradient estimates than K=8"
    if k8 is None or k16 is None:
        return {"claim": claim, "verdict": "inconclusive", "evidence": "needs plain K=8 and K=16 arms"}
    missing = [arm for arm in (k8, k16) if not measures_noise(arm)]
    if missing:
        older = [arm.name for arm in missing if arm.config.get("grad_noise") is None]
        off = [arm.name for arm in missing if arm.config.get("grad_noise") is False]
        other = [arm.name for arm in missing if arm.config.get("grad_noise")]
        why = ([f"the runs of {' and '.join(older)} predate the gradient-noise measurement (their config.json has no "
                "grad_noise setting, their metrics.jsonl no grad/noise)"] if older else []) + \
            ([f"the runs of {' and '.join(off)} ran with --no-grad-noise"] if off else []) + \
            ([f"no step of {' and '.join(other)} could be measured (one group per step, or unequal groups)"]
             if other else [])
        return {"claim": claim, "verdict": NOT_MEASURED, "at_equal_compute": NOT_MEASURED, "evidence": (
            "; ".join(why) + "; nothing else in the runs' files measures the gradient's noise, so no number stands in "
            "for it. Rerun the K=8 and K=16 arms with rlvr's measurement on to judge the claim")}
    windows = [(name, c) for name, c in (
        (f"steps 1-{MIDPOINT}", noise_comparison(k8, k16, lambda seed, step: step <= MIDPOINT)),
        (f"steps after {MIDPOINT}", noise_comparison(k8, k16, lambda seed, step: step > MIDPOINT))) if c is not None]
    if not windows:
        return {"claim": claim, "verdict": "inconclusive", "at_equal_compute": "inconclusive",
                "evidence": "the K=8 and K=16 runs share no seed and step that both measured"}
    onsets = {run.seed: run.collapse_onset for run in k16.usable}
    collapsed = {seed: onset for seed, onset in onsets.items() if onset is not None}
    after = noise_comparison(k8, k16, lambda seed, step: seed in collapsed and step >= collapsed[seed])
    if not collapsed:
        second = "K=16's entropy collapsed in no seed, so the claim's second half (negated by entropy-driven " \
                 "instability) is not tested here"
    elif after is None:
        second = "no measured step after K=16's entropy collapse, so the claim's second half is not tested"
    else:
        reading = {"above": "K=16's advantage holds after its entropy collapsed", "below":
                   "K=16's gradient estimates are worse than K=8's after its entropy collapsed",
                   "holds 1": "no advantage of K=16 can be told after its entropy collapsed"}[_side(after["snr"])]
        second = (f"the second half: from K=16's entropy-collapse onset on (per seed "
                  f"{', '.join(f'{s}: {o}' for s, o in sorted(collapsed.items()))}; {after['steps']} paired steps), "
                  f"gradient SNR K=16/K=8 at equal prompts {_ratio(after['snr'])}, per completion "
                  f"{_ratio(after['snr_per_completion'])}{_why_no_snr(after)}: {reading}")
    verdict, compute = _judge_windows(windows, "snr"), _judge_windows(windows, "snr_per_completion")
    late_note = "" if len(windows) == 2 else f"; the runs have no measured step after {MIDPOINT}, so only steps " \
                                              f"1-{MIDPOINT} are judged"
    evidence = ("; ".join(_window_text(name, c) for name, c in windows) + late_note + f"; {second}. At equal compute "
                f"(per completion) the same rule gives: {compute}. Supported = the 95% CI of the SNR ratio at equal "
                "prompts per step wholly above 1 in every window, refuted = wholly below 1 in one; CIs over seeds and "
                "steps (two-level bootstrap); SNR = B·Σ|G|²/Σ tr Σ over the window's steps")
    return {"claim": claim, "verdict": verdict, "at_equal_compute": compute, "evidence": evidence}


def reproducibility(k8: Arm | None, k16: Arm | None) -> dict:
    """Claim (g), docs/compare.md: SD across seeds of held-out HM@4 at the end and of training
    reward over the last 20 steps, SD(K=16)/SD(K=8) with a bootstrap CI over seeds, and the
    share of seeds that collapsed; fewer than MIN_SPREAD_SEEDS common seeds: inconclusive."""
    claim = "(g) K=8 is more reproducible than K=16"
    if k8 is None or k16 is None:
        return {"claim": claim, "verdict": "inconclusive", "evidence": "needs plain K=8 and K=16 arms"}
    outcomes = {"held-out hm@4 at the last evaluation": spread_ratio(k8, k16, "hm@4"),
                "training reward over the last 20 steps": spread_ratio(k8, k16, "reward")}
    common = sorted({r.seed for r in k8.usable} & {r.seed for r in k16.usable})
    parts = []
    for name, r in outcomes.items():
        if r is None:
            parts.append(f"{name}: n/a (needs 2 common seeds{' with evaluations' if 'hm@4' in name else ''})")
            continue
        values = "; ".join(f"K={k} " + ", ".join(f"{v:.3f}" for v in vs) for k, vs in zip((8, 16), r["values"]))
        parts.append(f"{name}: SD across seeds K=8 {r['sd'][0]:.4f}, K=16 {r['sd'][1]:.4f} (per seed {values}); "
                     f"SD(K=16)/SD(K=8) {_ratio(r)}")
    c8, c16 = collapsed_share(k8), collapsed_share(k16)
    evidence = ("; ".join(parts) + f"; entropy or reward collapsed in {c8[0]} of {c8[1]} K=8 seed(s) and {c16[0]} "
                f"of {c16[1]} K=16 seed(s) (reported, not judged). Seeds common to both arms: {len(common)}; CIs: "
                "bootstrap over seeds, paired. Supported = a ratio's 95% CI wholly above 1 and none wholly below 1; "
                "refuted = one wholly below 1 and none wholly above 1")
    measured = [r for r in outcomes.values() if r is not None]
    if not measured and len(common) >= MIN_SPREAD_SEEDS:
        return {"claim": claim, "verdict": NOT_MEASURED, "evidence": evidence}
    if len(common) < MIN_SPREAD_SEEDS:
        return {"claim": claim, "verdict": "inconclusive", "evidence": evidence + (
            f"; only {len(common)} seed(s) common to both arms: an SD across fewer than {MIN_SPREAD_SEEDS} seeds moves "
            "by a factor of 2 with one seed, so the rule needs at least 4")}
    above = [r for r in measured if _side(r) == "above"]
    below = [r for r in measured if _side(r) == "below"]
    verdict = "supported" if above and not below else "refuted" if below and not above else "inconclusive"
    return {"claim": claim, "verdict": verdict, "evidence": evidence}



def _judge_control(control: Arm, k16: Arm, arms: list[Arm], numbers: dict[str, dict], collapse_ratio: float
                   ) -> tuple[str, str]:
    """Claim (e) for one control arm against plain K=16 -> (verdict, evidence)."""
    n, base = numbers[control.name], numbers[k16.name]
    steady, _ = _stable(n, collapse_ratio)
    _, base_entropy_collapsed = _stable(base, collapse_ratio)
    reward_fired, _ = _reward_fired(n)
    base_reward_collapsed = _reward_fired(base)[1]
    base_collapsed = base_entropy_collapsed or base_reward_collapsed
    diff = arm_difference(control, k16)
    reward = reward_difference(control, k16)
    k = _largest_k(n)
    wide = passk_difference(control, k16, k) if k is not None else None
    evidence = (f"'{control.name}' ({variant_flags(control, arms[0])}): retention at the end "
                f"{_retention_end(n)} vs {fmt(base['retention_final'])} without it; collapse onsets "
                f"{_onsets(n)} vs {_onsets(base)}; reward-collapse onsets {_reward_onsets(n)} vs "
                f"{_reward_onsets(base)}; hm@4 at the last evaluation minus plain K=16: "
                f"{fmt_ci(diff)}; training reward over the last 20 steps {fmt(n['reward_last20'], '.3f')} vs "
                f"{fmt(base['reward_last20'], '.3f')} ({_paired_reward_diffs(n, base)}; paired by seed and step "
                f"{fmt_ci(reward, scale='diff')})"
                + (f"; pass@{k} at the end minus plain K=16: {fmt_ci(wide)}" if wide is not None else ""))
    if max(n["steps_done"], default=0) <= MIDPOINT:
        return "inconclusive", evidence + f"; the runs stop by step {MIDPOINT}, before the reported decay"
    if not steady:
        return "refuted", evidence + "; the controlled arm did not stay steady (no collapse in any seed and mean " \
                                     "retention ≥ 0.5)"
    if reward_fired:
        return "refuted", evidence + f"; entropy held, but the controlled arm's training reward collapsed in " \
                                     f"{reward_fired} seed(s)"
    if diff is not None and diff["ci"][1] < 0:
        return "refuted", evidence + "; entropy held, but hm@4 is significantly worse than without the control"
    if wide is not None and wide["ci"][1] < 0:
        return "refuted", evidence + f"; entropy held, but pass@{k} is significantly worse than without the control"
    if not base_collapsed:
        return "inconclusive", evidence + "; plain K=16 did not collapse here, so there was nothing to stabilise"
    how = " and ".join(w for w, c in (("in entropy", base_entropy_collapsed), ("in reward", base_reward_collapsed)) if c)
    checked = " and ".join(["hm@4"] + ([f"pass@{k}"] if wide is not None else []))
    return "supported", evidence + f"; steady where plain K=16 collapsed ({how}), {checked} not significantly worse"


def reach_finding(arms: list[Arm], numbers: dict[str, dict]) -> dict | None:
    """The finding beyond the five claims: pass@k at the largest k (--passk-eval-samples) at the
    end against the base model, per arm, paired per problem with a CI over seeds and problems,
    beside pass@1's change. An RL-trained policy can sharpen pass@1 while losing reach, problems
    its samples no longer solve at all (Yue et al. 2025). Reading per arm: 'lost' = the CI lies
    below 0, 'gained' = above 0, 'no change measured' = the CI holds 0. None without wide evaluations."""
    ks = passk_ks(arms)  # the k every run reports, as the pass@k section uses
    if not ks:
        return None
    top, rows = ks[-1], []
    for arm in arms:
        n = numbers[arm.name]["passk_vs_base"]
        d = n.get(top)
        if d is None:
            continue
        reading = "lost" if d["ci"][1] < 0 else "gained" if d["ci"][0] > 0 else "no change measured"
        rows.append({"arm": arm.name, "k": arm.config["k"], f"pass@{top}_minus_base": d,
                     "pass@1_minus_base": n.get(1), "reading": reading})
    if not rows:
        return None
    lost = [r["arm"] for r in rows if r["reading"] == "lost"]
    gained = [r["arm"] for r in rows if r["reading"] == "gained"]
    if lost:
        head = f"{', '.join(lost)} lost pass@{top} against the base model (CI below 0): training narrowed what the policy can reach"
    elif len(gained) == len(rows):
        head = f"every arm gained pass@{top} against the base model (CI above 0): no loss of reach at k = {top}"
    else:
        head = (f"no arm lost pass@{top} against the base model (no CI below 0)"
                + (f"; {', '.join(gained)} gained it (CI above 0)" if gained else ""))
    per_arm = "; ".join(f"{r['arm']} pass@{top} {fmt_ci(r[f'pass@{top}_minus_base'])}, pass@1 "
                        f"{fmt_ci(r['pass@1_minus_base'])}" for r in rows)
    return {"finding": f"pass@{top} at the end against the base model", "k": top, "arms": rows,
            "statement": f"{head}. End minus base, paired per problem (95% CI over seeds and problems): {per_arm}"}
