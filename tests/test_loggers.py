"""--log trackers: each one's files, read back with that tracker's own reader, hold the keys and
steps of metrics.jsonl once each, after a resume and after a rollback too."""
import json
import math
import shutil
import struct
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.train.trackers import TRACKERS, TRACKERS_FILE, attach_files, mlflow_key, read_ids

SMALL = ["--k", "4", "--prompts-per-step", "2", "--max-new-tokens", "6", "--threads", "1", "--quiet"]
EVAL = ["--eval-every", "2", "--eval-problems", "4", "--eval-samples", "4"]
CONFIG = {"k": 4, "lr": 1e-4, "log": "jsonl,x", "mlflow_uri": "", "quiet": True}


def need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e \".[{module}]\")")


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """W&B without a network or an account, and nothing written outside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- each tracker's reader: {key: {step: value}}, and the steps in the order they are shown -----

def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def tensorboard_hparams(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return dict(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)


def mlflow_metrics(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    from mlflow.tracking import MlflowClient

    stored = read_ids(run_dir)["mlflow"]
    client = MlflowClient(tracking_uri=stored["tracking_uri"])
    run = client.get_run(stored["run_id"])
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics}
    return history, run.data.params


def wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log (W&B's own protobuf Record; the file is a LevelDB
    log: a 7-byte ':W&B' header, then 32 KiB blocks of chunks with a 7-byte header each)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, records, pending = 7, [], b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str], dict]:
    """The run's history as `wandb sync` builds it from the offline directories, oldest first: a
    directory whose run record carries a branch point (resume_from) drops the steps after it.
    Also returns the directories and the config of the last one."""
    run_id = read_ids(run_dir)["wandb"]["id"]
    directories = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    steps: dict[int, dict] = {}
    config: dict = {}
    for directory in directories:
        for record in wandb_records(directory / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
                branch = config.get("_wandb", {}).get("branch_point")
                if branch:
                    steps = {s: row for s, row in steps.items() if s <= branch["step"]}
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                step = row.pop("_step")
                assert step not in steps, f"step {step} logged twice after the branch point"
                steps[step] = row
    history: dict[str, list] = {}
    for step in sorted(steps):
        for key, value in steps[step].items():
            if not key.startswith("_"):
                history.setdefault(key, []).append((step, value))
    return history, [d.name for d in directories], config


def expected(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {key: [(step, value)]}."""
    out: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step":
                out.setdefault(key, []).append((row["step"], float(value)))
    return out


def assert_same(shown: dict, rows: list[dict], *, rel: float = 1e-9, rename=lambda key: key) -> None:
    """The tracker shows every key of metrics.jsonl at the same steps (once each), same values."""
    want = {rename(key): points for key, points in expected(rows).items()}
    assert sorted(shown) == sorted(want)
    for key, points in want.items():
        assert [step for step, _ in shown[key]] == [step for step, _ in points], key
        for (_, got), (_, value) in zip(shown[key], points):
            assert got == pytest.approx(value, rel=rel, nan_ok=True) or (math.isnan(got) and math.isnan(value)), key


# --- the trackers alone: log, rewind (a rollback), reopen (a resume) --------------------------

def rows(steps, scale=1.0):
    return [{"step": s, "reward/mean": scale * s / 10, "eval/hm@4": 0.5, "flag": True} for s in steps]


def drive(name: str, run_dir: Path) -> list[dict]:
    """Steps 0-4, a rollback to 2, steps 3-5 again with other values, then a kill-free resume from
    step 4 that re-does step 5; returns the rows metrics.jsonl would hold."""
    tracker = TRACKERS.get(name)(run_dir, CONFIG, 0)
    for row in rows(range(5)):
        tracker.log(row)
    tracker.rewind(2)
    for row in rows(range(3, 6), scale=2.0):
        tracker.log(row)
    tracker.close()
    tracker = TRACKERS.get(name)(run_dir, {**CONFIG, "steps": 9, "lr": 2e-4}, 4)
    for row in rows([5, 6], scale=3.0):
        tracker.log(row)
    tracker.close()
    return rows(range(3)) + rows([3, 4], scale=2.0) + rows([5, 6], scale=3.0)


def as_numbers(rows_: list[dict]) -> list[dict]:
    return [{k: float(v) if k != "step" else v for k, v in r.items()} for r in rows_]


def test_tensorboard_rewind_and_resume_show_each_step_once(tmp_path):
    need("tensorboard")
    want = as_numbers(drive("tensorboard", tmp_path))
    assert_same(tensorboard_scalars(tmp_path), want, rel=1e-6)


def test_mlflow_rewind_and_resume_show_each_step_once(tmp_path):
    need("mlflow")
    want = as_numbers(drive("mlflow", tmp_path))
    history, params = mlflow_metrics(tmp_path)
    assert_same(history, want, rename=mlflow_key)
    assert "eval/hm_at_4" in history
    assert params["k"] == "4" and params["steps"] == "9"  # "steps" came with the resume
    assert params["lr"] == "0.0001"  # a param can't change: the resume's value is a tag
    from mlflow.tracking import MlflowClient
    stored = read_ids(tmp_path)["mlflow"]
    assert MlflowClient(stored["tracking_uri"]).get_run(stored["run_id"]).data.tags["resumed_with.lr"] == "0.0002"
    runs = list((tmp_path / "mlruns").glob("*/*/meta.yaml"))
    assert len(runs) == 1, "the resume continued the same MLflow run"


def test_mlflow_uri_puts_the_run_in_that_store(tmp_path):
    need("mlflow")
    tracker = TRACKERS.get("mlflow")(tmp_path / "run", {**CONFIG, "mlflow_uri": str(tmp_path / "store")}, 0)
    tracker.log({"step": 1, "reward/mean": 0.5})
    tracker.close()
    assert read_ids(tmp_path / "run")["mlflow"]["tracking_uri"] == (tmp_path / "store").as_uri()
    assert mlflow_metrics(tmp_path / "run")[0] == {"reward/mean": [(1, 0.5)]}
    assert not (tmp_path / "run" / "mlruns").exists()


def test_wandb_rewind_and_resume_show_each_step_once(tmp_path):
    need("wandb")
    want = as_numbers(drive("wandb", tmp_path))
    history, directories, config = wandb_history(tmp_path)
    assert_same(history, want)
    assert len(directories) == 3  # the first run, the rollback's rewind, the resume's rewind
    assert config["k"] == 4 and config["steps"] == 9 and config["lr"] == 2e-4


def write_plot(path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(2, 2))
    figure.gca().plot([0, 1], [0, 1])
    figure.savefig(path)
    plt.close(figure)
    return path


# --- rlvr train end to end: a killed and resumed run --------------------------------------------

def test_a_killed_and_resumed_run_shows_each_step_once_in_every_tracker(tmp_path, capsys):
    for module in ("tensorboard", "mlflow", "wandb"):
        need(module)
    out = tmp_path / "run"
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing import event_accumulator

    command = ["train", "--out", str(out), "--checkpoint-every", "2", "--log", "jsonl,tensorboard,wandb,mlflow",
               *EVAL, *SMALL]
    assert main([*command, "--steps", "3"]) == 0
    ids = read_ids(out)
    # killed after step 3 was logged, before its checkpoint: the resume starts after step 2
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints" / "step_000003")
    assert main([*command, "--steps", "4"]) == 0
    capsys.readouterr()
    assert read_ids(out) == ids, "the resume continued the same tracker runs"
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4] and "eval/hm@4" in metrics[0]

    scalars = tensorboard_scalars(out)
    assert [step for step, _ in scalars["reward/mean"]] == [1, 2, 3, 4]
    assert_same(scalars, metrics, rel=1e-5)
    assert tensorboard_hparams(out)["k"].number_value == 4

    history, params = mlflow_metrics(out)
    assert_same(history, metrics, rename=mlflow_key)
    assert params["k"] == "4" and params["log"] == "jsonl,tensorboard,wandb,mlflow"

    history, directories, config = wandb_history(out)
    assert_same(history, metrics)
    assert len(directories) == 2 and config["k"] == 4 and config["steps"] == 4

    # the report's plots, attached at the end (what `rlvr compare` does for each run)
    plots = [write_plot(tmp_path / f"{name}.png") for name in ("reward", "entropy")]
    config = json.loads((out / "config.json").read_text())["config"]
    assert attach_files(out, config, plots) == []
    accumulator = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["images"]) == ["report/entropy", "report/reward"]
    assert [e.step for e in accumulator.Images("report/reward")] == [4]
    assert len(accumulator.Scalars("reward/mean")) == 4
    client = MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
    assert sorted(f.path for f in client.list_artifacts(ids["mlflow"]["run_id"], "report")) == \
        ["report/entropy.png", "report/reward.png"]
    history, directories, _ = wandb_history(out)
    assert_same(history, metrics)  # attaching logged no step
    assert len(directories) == 3
    run_id = ids["wandb"]["id"]
    records = wandb_records(out / "wandb" / directories[-1] / f"run-{run_id}.wandb")
    assert [r.artifact.name for r in records if r.WhichOneof("record_type") == "artifact"] == [f"report-{run_id}"]
    assert list((out / "wandb").glob("offline-run-*/files/media/images/report/reward*.png"))


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_package_exits_2_naming_the_extra(name, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else find_spec(module, *a))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "1", "--log", f"jsonl,{name}", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "--log" in err and f'pip install -e ".[{name}]"' in err
    assert not (out / "metrics.jsonl").exists() and not (out / TRACKERS_FILE).exists()


def test_an_unknown_tracker_exits_2_listing_the_known_ones(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--log", "jsonl,neptune", *SMALL]) == 2
    assert "jsonl, mlflow, tensorboard, wandb" in capsys.readouterr().err


def test_compare_attaches_the_report_plots_to_each_run(model_dir, tmp_path, capsys):
    need("tensorboard")
    need("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing import event_accumulator

    out = tmp_path / "cmp"
    code = main(["compare", "--model", model_dir, "--k", "4", "--variant", "--seeds", "1", "--steps", "2",
                 "--eval-every", "2", "--eval-problems", "4", "--eval-samples", "4", "--prompts-per-step", "2",
                 "--max-new-tokens", "6", "--log", "tensorboard,mlflow", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots and "could not attach" not in capsys.readouterr().err
    run = out / "k4" / "seed0"
    accumulator = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["images"]) == sorted(f"report/{Path(p).stem}" for p in plots)
    stored = read_ids(run)["mlflow"]
    artifacts = MlflowClient(tracking_uri=stored["tracking_uri"]).list_artifacts(stored["run_id"], "report")
    assert sorted(Path(a.path).name for a in artifacts) == plots
