"""Where a run's metrics go besides metrics.jsonl: experiment trackers chosen with `--log`.

metrics.jsonl is always written (by the trainer) and is the record everything else is rebuilt
from. `--log jsonl,tensorboard,wandb,mlflow` adds trackers; each receives the same rows with the
same keys and steps. A tracker is a small object registered by name in TRACKERS:
`log(row)`, `rewind(step)` (a resume or rollback drops the rows after `step`: the tracker must
not show them twice), `close()`. Each tracker's package is an optional extra; `check_loggers`
refuses a missing one before any work.

Each tracker keeps its run's id in RUN/trackers.json, so a resumed run continues the same tracker
run; what a rewind does in each is in its class docstring and in docs/training.md (Trackers).
`attach_files` adds files (compare's report plots) to a finished run's trackers.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Protocol

from rlvr.registry import Registry

ALWAYS = "jsonl"  # written by the trainer itself; accepted in --log for clarity


class Tracker(Protocol):
    def log(self, row: dict) -> None:
        """One metrics row (its "step" key is the step)."""

    def rewind(self, step: int) -> None:
        """Forget rows after `step`: the run resumes (or rolls back) from there."""

    def close(self) -> None: ...


# name -> factory(run_dir: Path, config: dict, start_step: int) -> Tracker
TRACKERS: Registry[Callable[[Path, dict, int], Tracker]] = Registry("logger")
# name -> (importable module that must exist, the pip extra that brings it)
REQUIREMENTS: dict[str, tuple[str, str]] = {}


def parse(log: str) -> list[str]:
    """The tracker names in a --log value (jsonl, always on, is not one of them)."""
    return [name for name in (s.strip() for s in log.split(",")) if name and name != ALWAYS]


def check_loggers(log: str) -> None:
    """ValueError naming the problem and the fix: an unknown name, or a tracker whose package is
    not installed."""
    import importlib.util

    for name in parse(log):
        if name not in TRACKERS:
            known = ", ".join([ALWAYS, *TRACKERS.names()])
            raise ValueError(f"unknown logger {name!r}; available: {known}")
        module, extra = REQUIREMENTS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(f"--log {name} needs the {module} package; install it with pip install -e \".[{extra}]\"")


class Trackers:
    """The trackers of one run, called like one."""

    def __init__(self, log: str, run_dir: Path, config: dict, start_step: int) -> None:
        self.trackers = [TRACKERS.get(name)(Path(run_dir), config, start_step) for name in parse(log)]

    def log(self, row: dict) -> None:
        for tracker in self.trackers:
            tracker.log(row)

    def rewind(self, step: int) -> None:
        for tracker in self.trackers:
            tracker.rewind(step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


# --- shared by the trackers -------------------------------------------------------------------

TRACKERS_FILE = "trackers.json"  # in the run directory: each tracker's run id, so a resume continues it


def numbers(row: dict) -> dict[str, float]:
    """A metrics row's values without "step" (booleans as 0/1; anything not a number is left out)."""
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float))}


def run_name(run_dir: Path) -> str:
    """The run's name in a tracker: its directory and the one above (k8/seed0 in a compare)."""
    return "/".join(Path(run_dir).resolve().parts[-2:])


def read_ids(run_dir: Path) -> dict:
    path = Path(run_dir) / TRACKERS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_ids(run_dir: Path, name: str, ids: dict) -> None:
    from rlvr.train.checkpoint import write_text_atomic

    stored = read_ids(run_dir)
    stored[name] = ids
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / TRACKERS_FILE, json.dumps(stored, indent=1) + "\n")


def last_step(run_dir: Path) -> int:
    """The last step in metrics.jsonl (0 if none): where attached files are shown."""
    step = 0
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                step = int(json.loads(line).get("step", step))
            except (json.JSONDecodeError, TypeError, ValueError):
                continue
    return step


def wait_for_next_second() -> None:
    """TensorBoard event files and W&B offline run directories are named by the second they are
    opened in, and read back in name order: a writer reopened in the same second as the last one
    could sort before it, and its rewind would then apply to nothing."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def attach_files(run_dir: Path, config: dict, paths: list) -> list[str]:
    """Attaches files (the report's plots) to the run's trackers, at the run's last step, where the
    tracker supports it. Reopens each tracker's run from trackers.json. Returns the problems met,
    one line each, instead of raising: the report is written whatever a tracker does."""
    paths = [Path(p) for p in paths]
    problems = []
    for name in parse(config.get("log", ALWAYS)):
        attach = getattr(TRACKERS.get(name), "attach", None) if name in TRACKERS else None
        if attach is None or not paths:
            continue
        try:
            attach(Path(run_dir), config, paths, last_step(run_dir))
        except Exception as err:  # noqa: BLE001 - a tracker's failure must not lose the report
            problems.append(f"{run_dir}: could not attach the plots to {name}: {type(err).__name__}: {err}")
    return problems


# --- TensorBoard ------------------------------------------------------------------------------

REQUIREMENTS["tensorboard"] = ("tensorboard", "tensorboard")


def open_event_file(log_dir: Path, purge_step: int | None):
    """A SummaryWriter on a new event file; with `purge_step`, the reader drops older events from
    that step on."""
    from torch.utils.tensorboard import SummaryWriter

    if log_dir.is_dir() and any(log_dir.iterdir()):
        wait_for_next_second()
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Event files in RUN/tensorboard/ (`tensorboard --logdir RUN/tensorboard`). Every key is a
    scalar at its step; the config is the hparams entry and a `config` text.

    Resume from step N, and rollback to N, open a new event file with purge_step N+1: TensorBoard's
    reader then drops every event after step N that was written before it, so the re-done steps
    appear once. A fresh start (no checkpoint) purges from step 0."""

    def __init__(self, run_dir: Path, config: dict, start_step: int) -> None:
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = open_event_file(self.log_dir, start_step + 1 if start_step else 0)
        hparams = {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
                   for key, value in config.items()}
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        for summary in hparams_summaries(hparams, {"reward/mean": 0.0}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", start_step)
        self.writer.flush()

    def log(self, row: dict) -> None:
        for key, value in numbers(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()  # a kill must not lose steps that a checkpoint already covers

    def rewind(self, step: int) -> None:
        self.writer.close()
        self.writer = open_event_file(self.log_dir, step + 1)

    def close(self) -> None:
        self.writer.close()

    @staticmethod
    def attach(run_dir: Path, config: dict, paths: list[Path], step: int) -> None:
        """Each PNG as an image `report/<name>` at `step`."""
        import matplotlib.image

        writer = open_event_file(Path(run_dir) / "tensorboard", None)
        try:
            for path in paths:
                if path.suffix.lower() == ".png":
                    writer.add_image(f"report/{path.stem}", matplotlib.image.imread(path), step, dataformats="HWC")
        finally:
            writer.close()


# --- Weights & Biases -------------------------------------------------------------------------

REQUIREMENTS["wandb"] = ("wandb", "wandb")


@TRACKERS.register("wandb")
class WandbTracker:
    """A W&B run (project $WANDB_PROJECT, else "rlvr"), its files in RUN/wandb/. Offline, with no
    network: WANDB_MODE=offline, then `wandb sync RUN/wandb/offline-run-*` (oldest first).

    Its id is kept in RUN/trackers.json. Resume from step N, and rollback to N, reopen that run
    with W&B's rewind, `resume_from="ID?_step=N"`: the history after step N is dropped and the
    run goes on from N+1, so the re-done steps appear once. Offline, each reopening writes one
    more offline-run-*-ID directory whose run record carries that branch point; `wandb sync`
    applies it. A fresh start (no checkpoint) makes a new W&B run."""

    def __init__(self, run_dir: Path, config: dict, start_step: int) -> None:
        import wandb

        self.wandb = wandb
        self.run_dir, self.config = Path(run_dir), config
        run_id = read_ids(run_dir).get("wandb", {}).get("id") if start_step else None
        self.run = self._open(self.run_dir, config, run_id, start_step if run_id else None)
        self.run_id = self.run.id
        if not run_id:
            write_ids(run_dir, "wandb", {"id": self.run_id})

    @staticmethod
    def _open(run_dir: Path, config: dict, run_id: str | None, rewind_to: int | None):
        """A new run (`rewind_to` None), or the run `run_id` rewound to step `rewind_to`."""
        import wandb

        settings = wandb.Settings(silent=bool(config.get("quiet")), console="off")
        common = {"project": None if os.environ.get("WANDB_PROJECT") else "rlvr", "name": run_name(run_dir),
                  "dir": str(run_dir), "settings": settings}
        if rewind_to is None:
            run = wandb.init(**common)
        else:
            if (run_dir / "wandb").is_dir():
                wait_for_next_second()  # offline directories are named by the second: keep them in order
            try:
                run = wandb.init(resume_from=f"{run_id}?_step={rewind_to}", **common)
            except wandb.Error:  # a server without run rewind: resume; W&B then drops the steps it already has
                run = wandb.init(id=run_id, resume="allow", **common)
        run.config.update(config, allow_val_change=True)
        return run

    def log(self, row: dict) -> None:
        self.run.log(numbers(row), step=row["step"])

    def rewind(self, step: int) -> None:
        self.run.finish()
        self.run = self._open(self.run_dir, self.config, self.run_id, step)

    def close(self) -> None:
        self.run.finish()
        self.wandb.teardown()  # finish() can return before the run's files are written; this waits

    @staticmethod
    def attach(run_dir: Path, config: dict, paths: list[Path], step: int) -> None:
        """The files as an artifact `report-ID` (type report), and PNGs as images `report/<name>` in
        the run's summary. Reopens the run at `step` without logging a step."""
        import wandb

        run_id = read_ids(run_dir).get("wandb", {}).get("id")
        if not run_id:
            raise RuntimeError(f"no W&B run id in {Path(run_dir) / TRACKERS_FILE}")
        run = WandbTracker._open(Path(run_dir), config, run_id, step)
        try:
            artifact = wandb.Artifact(f"report-{run_id}", type="report")
            for path in paths:
                artifact.add_file(str(path))
            run.log_artifact(artifact)
            run.summary.update({f"report/{path.stem}": wandb.Image(str(path))
                                for path in paths if path.suffix.lower() == ".png"})
        finally:
            run.finish()
            wandb.teardown()


# --- MLflow -----------------------------------------------------------------------------------

REQUIREMENTS["mlflow"] = ("mlflow", "mlflow")
MLFLOW_EXPERIMENT = "rlvr"  # unless $MLFLOW_EXPERIMENT_NAME names another


def mlflow_key(key: str) -> str:
    """MLflow metric names allow letters, digits and _-. /: only: eval/hm@4 becomes eval/hm_at_4."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", key.replace("@", "_at_"))


def mlflow_uri(run_dir: Path, config: dict) -> str:
    """--mlflow-uri, or a file store in the run directory (file:RUN/mlruns). A plain path is a
    file store too, as in MLflow."""
    uri = config.get("mlflow_uri") or str(Path(run_dir) / "mlruns")
    is_uri = uri == "databricks" or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri)
    return uri if is_uri else Path(uri).resolve().as_uri()


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode behind this switch; it is the store that
        # needs no server and no database, and its files are what rewind() edits.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


@TRACKERS.register("mlflow")
class MlflowTracker:
    """An MLflow run in experiment "rlvr" ($MLFLOW_EXPERIMENT_NAME), in the file store RUN/mlruns
    or the server of --mlflow-uri. The config is its params; metric names are the keys with '@'
    spelled '_at_' (MLflow refuses '@').

    Its run id is kept in RUN/trackers.json. Resume from step N, and rollback to N, continue that
    run. MLflow's API has no way to delete logged metric values, so in a file store (the default,
    or any file: URI) rewind() removes the values after step N from the run's metric files, and
    the re-done steps appear once. On a server (http:, databricks, a database) nothing can be
    removed: the re-done steps are logged again, and each metric's history holds both values at
    those steps (the later one by timestamp is the re-done one). A fresh start (no checkpoint)
    makes a new MLflow run."""

    def __init__(self, run_dir: Path, config: dict, start_step: int) -> None:
        from mlflow.entities import Param

        self.uri = mlflow_uri(run_dir, config)
        self.client = mlflow_client(self.uri)
        stored = read_ids(run_dir).get("mlflow", {})
        resume = bool(start_step) and stored.get("tracking_uri") == self.uri and "run_id" in stored
        if resume:
            self.run_id = stored["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
            self.rewind(start_step)  # the steps logged after the checkpoint, before the kill
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", MLFLOW_EXPERIMENT)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=run_name(run_dir),
                                         tags={"rlvr.run_dir": str(Path(run_dir).resolve())})
            self.run_id, logged = run.info.run_id, {}
            write_ids(run_dir, "mlflow", {"run_id": self.run_id, "tracking_uri": self.uri})
        # Params can't change once logged: a resume with another --steps (say) records it as a tag.
        params = [Param(key, str(value)[:6000]) for key, value in config.items() if key not in logged]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        for key, value in config.items():
            if key in logged and logged[key] != str(value)[:6000]:
                self.client.set_tag(self.run_id, f"resumed_with.{key}", str(value)[:5000])

    def log(self, row: dict) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(key), value, timestamp, row["step"]) for key, value in numbers(row).items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def rewind(self, step: int) -> None:
        if not self.uri.startswith("file:"):
            return  # a server's metric history can't be edited: see the class docstring
        from mlflow.utils.file_utils import local_file_uri_to_path

        run = self.client.get_run(self.run_id)
        metrics_dir = Path(local_file_uri_to_path(self.uri)) / run.info.experiment_id / self.run_id / "metrics"
        for path in (p for p in metrics_dir.rglob("*") if p.is_file()) if metrics_dir.is_dir() else ():
            lines = path.read_text().splitlines()
            # a line is "timestamp value step [dataset digest]"; "timestamp value" is step 0
            kept = [line for line in lines if line.strip() and int((line.split() + ["0"])[2]) <= step]
            if len(kept) == len(lines):
                continue
            if kept:
                tmp = metrics_dir.parent / ".tmp-rewind"  # not among the metric files, which MLflow lists
                tmp.write_text("".join(line + "\n" for line in kept))
                os.replace(tmp, path)
            else:
                path.unlink()  # MLflow reads an empty metric file as malformed

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")

    @staticmethod
    def attach(run_dir: Path, config: dict, paths: list[Path], step: int) -> None:
        """The files as artifacts under report/ of the run."""
        stored = read_ids(run_dir).get("mlflow", {})
        if "run_id" not in stored:
            raise RuntimeError(f"no MLflow run id in {Path(run_dir) / TRACKERS_FILE}")
        client = mlflow_client(stored["tracking_uri"])
        for path in paths:
            client.log_artifact(stored["run_id"], str(path), artifact_path="report")
