"""`rlvr compare`: train several arms (K values, variants) on the same seeds and prompt stream,
then write the report (rlvr/study/report/).

Run it:  rlvr compare                       (K=8, K=16, K=16 + entropy control; 4 seeds × 250 steps)
         rlvr compare --k 8 16 32 --variant filt="--group-filter" --seeds 2 --steps 300

How the arms are made fair. Every arm of a seed starts from the same weights and sees the same
prompt stream (prompts are a function of (seed, step), see rlvr/train/state.py), and shares every
setting except what the arm changes:
  * `--k K...`: one arm per K, named kK;
  * `--variant NAME=FLAGS`: an arm with `rlvr train` FLAGS on top of the first arm's settings
    (so K is the first --k unless FLAGS sets it);
  * `--match prompts` keeps prompts per step equal; `--match samples` keeps samples per step
    equal (prompts per step = B·K_first / K_arm);
  * `--lr-scaling linear|sqrt` multiplies an arm's learning rate by (its samples per step /
    the first arm's), or its square root.

Execution. Each run is a `rlvr train` subprocess on DIR/<arm>/seed<N>/ (so its memory is its
own and a crash stays in it), configured by a train.toml written next to it; with `--nproc N`
each run is N data-parallel ranks (docs/distributed.md), with the same results as one process. Runs go seed by
seed, `--jobs` at a time. A finished run (final/ or a `done` event, same config) is skipped, so re-running
an interrupted compare continues where it stopped; an interrupted run resumes from its
checkpoint. A run that fails is reported as failed (its log is DIR/<arm>/seed<N>/train.log)
and the others still run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import ConfigError, TrainConfig, add_fields, opt, require_positive, to_dict, to_toml
from rlvr.train.preflight import check_train_config

DEFAULT_CONTROL = "k16-ent=--k 16 --entropy-target 1.2"  # the best control of docs/entropy.md's study
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass
class CompareConfig:
    """compare's own settings; every `rlvr train` option is accepted too and applies to all arms."""

    k: list = opt([8, 16], "group sizes K, one arm each (named k8, k16, ...)")
    variant: list = opt([DEFAULT_CONTROL], "extra arms NAME=\"FLAGS\" (rlvr train flags on top of the first arm); "
                                           "giving any replaces the default; --variant with no value: none",
                        item=str)
    seeds: int = opt(4, "seeds per arm: --seed, --seed+1, ...")
    steps: int = opt(250, "optimizer steps per run")
    eval_every: int = opt(25, "held-out evaluation every N steps and at step 0 (0 = never; the report needs it)")
    match: str = opt("prompts", "prompts: equal prompts per step; samples: equal samples per step (K=16 gets half "
                                "the prompts of K=8)")
    lr_scaling: str = opt("none", "scale each arm's lr with its samples per step relative to the first arm: none, "
                                  "linear or sqrt")
    jobs: int = opt(1, "runs at once (each gets cores / jobs torch threads unless --threads is given)")
    out: str = opt("runs/compare", "comparison directory: DIR/<arm>/seed<N>/ runs, report.md/html, plots/, summary.json")

    HELP_GROUPS = {"comparison": ("k", "variant", "seeds", "steps", "eval_every", "match", "lr_scaling", "jobs",
                                  "out")}  # rlvr.config.HELP_GROUP_DOCS

    def validate(self) -> None:
        if not self.k and not self.variant:
            raise ConfigError("k", "give at least one K or one --variant")
        for k in self.k:
            if k < 2:
                raise ConfigError("k", f"every K must be at least 2, got {k}")
        if len(set(self.k)) != len(self.k):
            raise ConfigError("k", f"each K once, got {self.k}")
        require_positive(self, ("seeds", "steps", "jobs"))
        if self.eval_every < 0:
            raise ConfigError("eval_every", f"must be 0 or more, got {self.eval_every}")
        if self.match not in ("prompts", "samples"):
            raise ConfigError("match", f"must be prompts or samples, got {self.match!r}")
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise ConfigError("lr_scaling", f"must be none, linear or sqrt, got {self.lr_scaling!r}")


PRESETS = Path(__file__).parent / "presets"  # shipped studies: rlvr compare --preset NAME


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS.glob("*.toml"))


def preset_path(name: str) -> str:
    """The TOML file of the shipped preset `name` (ConfigError naming the presets otherwise)."""
    path = PRESETS / f"{name}.toml"
    if not path.is_file():
        raise ConfigError("preset", f"unknown preset {name!r}; the presets are: {', '.join(preset_names())} "
                                    "(rlvr/study/presets/NAME.toml; --config FILE.toml reads a file of your own)")
    return str(path)


# settings compare owns (or fixes per run) that `rlvr train` would otherwise take
OWNED = {"k", "out", "steps", "eval_every", "quiet"}


@dataclass
class RunPlan:
    arm: str
    variant: str  # the FLAGS the arm adds ("" for a plain K arm)
    order: int
    config: TrainConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.out)


def _parse_variant_flags(name: str, flags: str) -> dict:
    """`rlvr train` FLAGS -> the settings they give (ConfigError naming --variant on any problem)."""
    import argparse


    class Raising(argparse.ArgumentParser):
        def error(self, message):
            raise ConfigError("variant", f"{name}: {message} (in {flags!r}; see rlvr train --help)")

    parser = Raising(prog=f"variant {name}", add_help=False)
    add_fields(parser, TrainConfig)
    try:
        args = parser.parse_args(shlex.split(flags))
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError("variant", f"{name}: cannot split {flags!r}: {err}") from None
    given = {k: v for k, v in vars(args).items() if k != "config"}
    banned = sorted(set(given) & {"out", "seed", "steps", "eval_every"})
    if banned:
        raise ConfigError("variant", f"{name}: {', '.join('--' + b.replace('_', '-') for b in banned)} must be the "
                                     "same for every arm; give it to rlvr compare itself")
    return given


def plan_runs(cc: CompareConfig, base: dict) -> list[RunPlan]:
    """Every (arm, seed) run with its full, validated config. `base` holds the train settings
    given to compare (applied to every arm). Raises ConfigError before any work starts."""
    cc.validate()
    arms: list[tuple[str, str, dict]] = [(f"k{k}", "", {"k": k}) for k in cc.k]
    first_k = cc.k[0] if cc.k else TrainConfig().k
    for spec in cc.variant:
        name, sep, flags = spec.partition("=")
        name = name.strip()
        if not sep or not ARM_NAME.fullmatch(name):
            raise ConfigError("variant", f"expected NAME=\"FLAGS\" with NAME of letters, digits, '_', '.', '+', '-'; "
                                         f"got {spec!r}")
        arms.append((name, flags.strip(), {"k": first_k, **_parse_variant_flags(name, flags)}))
    names = [a[0] for a in arms]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError("variant", f"two arms are named {duplicate!r}; arm names must be unique")

    defaults = to_dict(TrainConfig())
    base = {k: v for k, v in base.items() if k not in OWNED}
    ref_k = arms[0][2]["k"]
    ref_b = base.get("prompts_per_step", defaults["prompts_per_step"])
    plans = []
    for order, (name, flags, overrides) in enumerate(arms):
        values = {**defaults, **base, **overrides, "steps": cc.steps, "eval_every": cc.eval_every, "quiet": True}
        k = values["k"]
        if cc.match == "samples" and "prompts_per_step" not in overrides:
            if (ref_b * ref_k) % k:
                raise ConfigError("match", f"arm {name}: {ref_b} prompts x K={ref_k} = {ref_b * ref_k} samples per "
                                           f"step cannot be split into groups of K={k}; pick --prompts-per-step so "
                                           "that B·K of the first arm is divisible by every K")
            values["prompts_per_step"] = ref_b * ref_k // k
        if cc.lr_scaling != "none":
            ratio = values["prompts_per_step"] * k / (ref_b * ref_k)
            values["lr"] = values["lr"] * (ratio if cc.lr_scaling == "linear" else math.sqrt(ratio))
        if cc.jobs > 1 and not values["threads"]:  # each run's ranks (--nproc) share its share of the cores
            values["threads"] = max(1, (os.cpu_count() or 1) // (cc.jobs * values["nproc"]))
        for seed_index in range(cc.seeds):
            seed = values["seed"] + seed_index
            cfg = TrainConfig(**{**values, "seed": seed, "out": str(Path(cc.out) / name / f"seed{seed}")})
            try:
                check_train_config(cfg)
            except ConfigError as err:
                raise ConfigError(err.field, f"in arm {name}: {str(err).split(': ', 1)[1]}") from None
            plans.append(RunPlan(name, flags, order, cfg))
    return plans


def is_finished(plan: RunPlan) -> bool:
    """A run of exactly this config that ended (a re-run skips it): final/ written, or a `done`
    event, which the run writes after final/. A study committed without its weights (its light
    files copied back into --out) thus resumes with the runs it has not finished."""
    from rlvr.train.rundir import read_jsonl

    config_file = plan.dir / "config.json"
    if not config_file.is_file():
        return False
    if not (plan.dir / "final").is_dir() and not any(e.get("event") == "done"
                                                      for e in read_jsonl(plan.dir / "events.jsonl")):
        return False
    old = json.loads(config_file.read_text()).get("config", {})
    new, defaults = to_dict(plan.config), to_dict(TrainConfig())
    # A setting added since the run was made is taken at its default, which is what it ran with;
    # steps count too: a run finished at fewer steps than asked resumes and trains on.
    return all(old.get(k, defaults[k]) == v for k, v in new.items()
               if k == "steps" or k not in TrainConfig.RESUMABLE_CHANGES)


def _refuse_extending_without_weights(plan: RunPlan) -> None:
    """A run that ended, kept as light files only (no checkpoints/, no final/), cannot train on to
    more steps: it would start over and replace its files. Refused before any work."""
    from rlvr.train.checkpoint import list_checkpoints
    from rlvr.train.rundir import read_jsonl

    if plan.config.force:
        return
    events = read_jsonl(plan.dir / "events.jsonl")
    if (any(e.get("event") == "done" for e in events) and not (plan.dir / "final").is_dir()
            and not list_checkpoints(plan.dir / "checkpoints")):
        ended = max(e.get("step", 0) for e in events if e.get("event") == "done")
        raise ConfigError("steps", f"{plan.dir} holds a run that ended at step {ended} without its weights "
                                   f"(light files only), so it cannot train on to {plan.config.steps} steps; "
                                   "use another --out, or --force to start it over")


def _write_arm_meta(plan: RunPlan, cc: CompareConfig, **extra) -> None:
    plan.dir.mkdir(parents=True, exist_ok=True)
    meta = {"arm": plan.arm, "variant": plan.variant, "order": plan.order, "match": cc.match,
            "lr_scaling": cc.lr_scaling, **extra}
    (plan.dir / "arm.json").write_text(json.dumps(meta, indent=1) + "\n")


def share_passk_base(plan: RunPlan, plans: list[RunPlan]) -> None:
    """--passk-eval-samples: the step-0 wide evaluation of a seed is that of the same model
    evaluated the same way in every arm whose settings differ only in training (the
    fingerprint of rlvr/train/evaluator.py), so it is computed once: a run about to start gets
    an earlier run's row as its passk_base.json, which the run uses only if the fingerprints
    match (and otherwise evaluates step 0 itself)."""
    from rlvr.train.evaluator import passk_fingerprint
    from rlvr.train.rundir import read_jsonl

    if not plan.config.passk_eval_samples:
        return
    fingerprint = passk_fingerprint(plan.config)
    for other in plans:
        if other is plan or other.config.seed != plan.config.seed:
            continue
        row = next((r for r in read_jsonl(other.dir / "passk.jsonl")
                    if r.get("step") == 0 and r.get("fingerprint") == fingerprint and "reused_from" not in r), None)
        if row is not None:
            plan.dir.mkdir(parents=True, exist_ok=True)
            (plan.dir / "passk_base.json").write_text(json.dumps({**row, "source": str(other.dir)}) + "\n")
            return


class _Job:
    """One `rlvr train` subprocess and what its metrics.jsonl has said so far."""

    def __init__(self, plan: RunPlan, cc: CompareConfig) -> None:
        self.plan = plan
        _write_arm_meta(plan, cc)
        toml_file = plan.dir / "train.toml"
        toml_file.write_text(to_toml(to_dict(plan.config)))
        self.log = open(plan.dir / "train.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "rlvr.cli", "train", "--config", str(toml_file)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.offset = 0
        self.last: dict = {}
        self.last_eval: float | None = None

    def poll_metrics(self) -> int:
        """Reads new metrics rows; returns how many training steps they added."""
        path = self.plan.dir / "metrics.jsonl"
        if not path.is_file():
            return 0
        if path.stat().st_size < self.offset:  # rewritten shorter (a rollback truncated it): read it again
            self.offset = 0
        with open(path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        added = 0
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "eval/hm@4" in row:
                self.last_eval = row["eval/hm@4"]
            if "reward/mean" in row:
                self.last, added = row, added + 1
        return added


class _Display:
    """Every run's step, reward, entropy, last hm@4 and state, and an overall ETA."""

    def __init__(self, plans: list[RunPlan], done: set, enabled: bool) -> None:
        self.plans, self.enabled = plans, enabled
        self.state = {id(p): ("done (skipped)" if id(p) in done else "waiting") for p in plans}
        self.rows: dict = {}
        # work is counted in samples (steps × B × K), so a K=16 step weighs twice a K=8 one in the ETA
        self.remaining = sum(p.config.steps * _samples(p) for p in plans if id(p) not in done)
        self.started, self.steps_done = time.monotonic(), 0  # steps_done: in samples
        self.live = None
        if enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2, transient=False)
            self.live.start()

    def _table(self):
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        eta = ""
        if self.steps_done:
            eta = f", ETA {_clock(elapsed / self.steps_done * max(0, self.remaining - self.steps_done))}"
        table = Table(title=f"rlvr compare: {_clock(elapsed)} elapsed{eta}")
        for col in ("arm", "seed", "step", "reward", "entropy", "hm@4", "state"):
            table.add_column(col, justify="left" if col in ("arm", "state") else "right")
        for p in self.plans:
            row, hm = self.rows.get(id(p), ({}, None))
            table.add_row(p.arm, str(p.config.seed), f"{row.get('step', 0)}/{p.config.steps}",
                          f"{row['reward/mean']:.3f}" if row else "", f"{row['entropy/mean']:.3f}" if row else "",
                          f"{hm:.3f}" if hm is not None else "", self.state[id(p)])
        return table

    def update(self, job: _Job | None = None, added: int = 0, state: str | None = None, plan: RunPlan | None = None) -> None:
        plan = job.plan if job else plan
        if job:
            self.rows[id(plan)] = (job.last, job.last_eval)
            self.steps_done += added * _samples(plan)
        if state:
            self.state[id(plan)] = state
            if not self.enabled:
                print(f"rlvr compare: {plan.arm} seed {plan.config.seed}: {state}", file=sys.stderr, flush=True)
        if self.live:
            self.live.update(self._table())

    def stop(self) -> None:
        if self.live:
            self.live.stop()


def _samples(plan: RunPlan) -> int:
    return plan.config.prompts_per_step * plan.config.k


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def run_compare(cc: CompareConfig, base: dict, command: str = "", progress: bool = True) -> tuple[dict | None, list]:
    """Plans (validating everything first), runs what is not finished, writes the report.
    Returns (summary or None, failed runs as (arm, seed, message))."""
    from rlvr.study.report import ReportError, build_report, machine_line
    from rlvr.train.rundir import RunDir

    plans = plan_runs(cc, base)
    for plan in plans:
        if not is_finished(plan):
            RunDir(plan.config).check_compatible(plan.config)  # a different run in the way: refuse now
            _refuse_extending_without_weights(plan)
    root = Path(cc.out)
    root.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    (root / "compare.json").write_text(json.dumps(
        {"command": command, "machine": machine, "compare": dataclasses.asdict(cc),
         "runs": [{"arm": p.arm, "variant": p.variant, "seed": p.config.seed, "out": p.config.out} for p in plans]},
        indent=1) + "\n")

    done = set()
    for plan in plans:
        if is_finished(plan):
            done.add(id(plan))
            _write_arm_meta(plan, cc)
    display = _Display(plans, done, enabled=progress and sys.stderr.isatty())
    failed: list = []
    # seed-major: all arms of the first seed, then the next, so a stopped compare leaves comparable arms
    queue = sorted((p for p in plans if id(p) not in done), key=lambda p: (p.config.seed, p.order))
    running: list[_Job] = []
    try:
        while queue or running:
            while queue and len(running) < cc.jobs:
                plan = queue.pop(0)
                share_passk_base(plan, plans)
                running.append(_Job(plan, cc))
                display.update(plan=plan, state="running")
            time.sleep(0.25)
            for job in list(running):
                added = job.poll_metrics()
                code = job.proc.poll()
                if code is None:
                    display.update(job, added)
                    continue
                added += job.poll_metrics()
                running.remove(job)
                job.log.close()
                if code == 0:
                    display.update(job, added, state="done")
                else:
                    tail = (job.plan.dir / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
                    message = f"exit code {code}: {' / '.join(tail)}"
                    failed.append((job.plan.arm, job.plan.config.seed, message))
                    _write_arm_meta(job.plan, cc, failed=True, error=message)
                    display.update(job, added, state=f"FAILED (see {job.plan.dir / 'train.log'})")
    except BaseException:
        for job in running:
            job.proc.terminate()
        for job in running:
            job.proc.wait()
        raise
    finally:
        display.stop()
    # exactly this comparison's runs (an --out reused with other arms may hold more)
    readable = [p.config.out for p in plans if (p.dir / "config.json").is_file()]
    unread = [f"{arm} seed {seed}: {message}" for arm, seed, message in failed
              if not (Path(cc.out) / arm / f"seed{seed}" / "config.json").is_file()]
    try:
        if not readable:
            raise ReportError("no run got far enough to be reported")
        summary = build_report(readable, str(root), context={"command": command, "machine": machine, "jobs": cc.jobs,
                                                              "unreadable": unread})
    except ReportError as err:
        print(f"rlvr compare: no report: {err}", file=sys.stderr)
        summary = None
    if summary is not None:
        _attach_plots(plans, root)
    return summary, failed


def _attach_plots(plans: list[RunPlan], root: Path) -> None:
    """With --log trackers, the report's plots go to each run's tracker runs too (rlvr/train/trackers.py)."""
    from rlvr.train.trackers import attach_files, parse

    plots = sorted((root / "plots").glob("*.png"))
    for plan in plans:
        if plots and parse(plan.config.log) and (plan.dir / "config.json").is_file():
            for problem in attach_files(plan.dir, to_dict(plan.config), plots):
                print(f"rlvr compare: {problem}", file=sys.stderr)
