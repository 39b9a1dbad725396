"""`rlvr export RUN --to DIR`: a run's model as a directory other tools and `--model DIR` load.

What is exported: the run's `final/` by default, `--step N` its checkpoint of step N, `--best` its
`best/` (written by `--keep-best`). What it becomes:
  built-in model   model.safetensors + config.json, the layout `--model DIR` and `rlvr eval` load
  transformers     save_pretrained weights, the tokenizer with its chat template, generation config
  LoRA run         the adapter alone (adapter_config.json points at the base model), or with
                   `--merge-lora` the base model with the adapter merged in: a full transformers model
Every export also holds rlvr's record of where it came from (config.json for the built-in model,
rlvr.json for transformers). A checkpoint is rebuilt by loading the run's start model with the
run's model settings (LoRA rank, targets, ...) and then the checkpoint's trained weights. The
directory is written under a temporary name and renamed into place, so it is complete or absent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlvr.train.checkpoint import PREFIX, list_checkpoints, replace_dir
from rlvr.config import ConfigError, check_writable, config_fields, opt


@dataclass
class ExportConfig:
    run: str = opt("", "RUN: the run directory to export (config.json, and final/, best/ or checkpoints/)")
    to: str = opt("", "directory to write the exported model to (must not exist or be empty, unless --force)")
    step: int = opt(-1, "export the checkpoint of this step (checkpoints/step_N) instead of final/ (-1 = final/)")
    best: bool = opt(False, "export best/, the model of the run's best evaluation (needs a run trained with "
                            "--keep-best)")
    merge_lora: bool = opt(False, "LoRA runs: merge the adapter into the base model and write a full transformers "
                                  "model instead of the adapter alone")
    force: bool = opt(False, "replace --to when it exists and is not empty")


def _run_error(message: str) -> ConfigError:
    """A ConfigError about the positional RUN argument (there is no --run flag to name)."""
    error = ConfigError("run", message)
    error.args = (f"RUN: {message}",)
    return error


@dataclass
class Source:
    """What to export: a saved model directory, or a checkpoint to rebuild on the start model."""

    label: str  # "final", "best" or "step_000040": for messages and the export's record
    step: int | None  # the training step the weights are from, when known
    model_dir: Path | None = None  # final/ or best/
    checkpoint: Path | None = None  # checkpoints/step_N/state.pt


def read_run_config(run: Path) -> dict:
    """The run's resolved TrainConfig fields; RUN error unless `run` is an rlvr run directory."""
    config_file = run / "config.json"
    try:
        recorded = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise _run_error(f"{str(run)!r} is not an rlvr run directory (no config.json); give the --out of "
                         "an `rlvr train` run") from None
    except (OSError, ValueError) as err:
        raise _run_error(f"cannot read {config_file}: {err}") from None
    if not isinstance(recorded, dict) or "rlvr_version" not in recorded or not isinstance(recorded.get("config"), dict):
        raise _run_error(f"{str(run)!r} is not an rlvr run directory (its config.json is not one `rlvr train` "
                         "wrote); give the --out of an `rlvr train` run")
    return recorded["config"]


def _saved_step(model_dir: Path) -> int | None:
    for name in ("rlvr.json", "config.json"):
        try:
            steps = json.loads((model_dir / name).read_text()).get("steps")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(steps, int):
            return steps
    return None


def find_source(cfg: ExportConfig, run: Path) -> Source:
    """final/, best/ or a checkpoint of `run`, as the options ask; ConfigError naming what exists."""
    steps = [int(p.name[len(PREFIX):]) for p in list_checkpoints(run / "checkpoints")]
    available = f"checkpoints of steps {', '.join(map(str, steps))}" if steps else "no checkpoints"
    if cfg.best and cfg.step >= 0:
        raise ConfigError("best", "give --best or --step, not both")
    if cfg.best:
        best = run / "best"
        if not (best / "best.json").is_file():
            raise ConfigError("best", f"{str(run)!r} has no best/ (complete with best.json); it is kept by training "
                                      "with --eval-every N --keep-best METRIC; export final/ (no option) or a "
                                      f"checkpoint with --step N ({available})")
        recorded = json.loads((best / "best.json").read_text())
        return Source("best", recorded.get("step"), model_dir=best)
    if cfg.step >= 0:
        if cfg.step not in steps:
            raise ConfigError("step", f"{str(run)!r} has no checkpoint of step {cfg.step}; it has {available} "
                                      "(--checkpoint-every keeps the newest --keep-checkpoints of them)")
        return Source(f"{PREFIX}{cfg.step:06d}", cfg.step, checkpoint=run / "checkpoints" / f"{PREFIX}{cfg.step:06d}" / "state.pt")
    final = run / "final"
    if not final.is_dir():
        raise _run_error(f"{str(run)!r} has no final/ (the run has not finished); finish it by re-running its "
                         f"command, or export a checkpoint with --step N ({available})")
    return Source("final", _saved_step(final), model_dir=final)


def _check_target(cfg: ExportConfig, run: Path) -> Path:
    to = Path(cfg.to)
    if not cfg.to:
        raise ConfigError("to", "give the directory to export to, e.g. --to exported/model")
    resolved, run_resolved = to.resolve(), run.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents or any(
            resolved == part or part in resolved.parents for part in
            (run_resolved / "final", run_resolved / "best", run_resolved / "checkpoints")):
        raise ConfigError("to", f"{cfg.to!r} would overwrite the run itself; give a directory outside its final/, "
                                "best/ and checkpoints/")
    if to.exists():
        if not to.is_dir():
            raise ConfigError("to", f"{cfg.to!r} exists and is not a directory; give another --to")
        if any(to.iterdir()) and not cfg.force:
            raise ConfigError("to", f"{cfg.to!r} exists and is not empty; give another --to, or --force to replace it")
    check_writable(str(to.parent) if str(to.parent) else ".", "to")
    return to


def _settings(run_cfg: dict):
    from rlvr.backends import ModelSettings

    names = ModelSettings.__dataclass_fields__
    values = {name: run_cfg[name] for name in names if name in run_cfg}
    values.update(device="cpu", gradient_checkpointing=False)  # exporting needs no training memory savings
    return ModelSettings(**values)


def _load(source: Source, run_cfg: dict):
    """The policy holding the source's weights (LoRA runs: with the adapter as peft modules)."""
    from rlvr.backends import ModelError, load_policy

    try:
        if source.model_dir is not None:
            return load_policy(str(source.model_dir), _settings(run_cfg))
        policy = load_policy(run_cfg["model"], _settings(run_cfg))
    except ModelError as err:
        where = "saved model" if source.model_dir is not None else f"start model {run_cfg['model']!r}"
        raise _run_error(f"cannot load the run's {where}: {err}" + (
            "" if source.model_dir is not None else "; run `rlvr export` from the directory the run was started in")
        ) from None
    import torch

    try:
        state = torch.load(source.checkpoint, map_location="cpu", weights_only=False)
        policy.load_trainable_state_dict(state["model"])
    except Exception as err:  # a torn checkpoint, or one of another model
        raise ConfigError("step", f"cannot restore {source.checkpoint}: {type(err).__name__}: {err}; "
                                  "choose another --step") from None
    return policy


def _absolute_base(directory: Path) -> None:
    """An adapter names its base model by the path training used; make a relative one absolute."""
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("rlvr.json", "base_model")):
        path = directory / name
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        base = meta.get(key)
        if isinstance(base, str) and base and not Path(base).is_absolute() and Path(base).is_dir():
            meta[key] = str(Path(base).resolve())
            path.write_text(json.dumps(meta, indent=2) + "\n")


def _save_merged(policy, directory: Path, extra: dict) -> None:
    """The base model with the LoRA adapter merged in, as a plain transformers directory."""
    from rlvr.backends import RLVR_META

    merged = policy.peft_model.merge_and_unload()
    merged.config.use_cache = True  # training switched it off; generation wants it
    merged.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
    meta = {"backend": "hf", "base_model": policy.base_spec, "lora": False, "merged_lora": True,
            "chat_template": policy.settings.chat_template, **extra}
    (directory / RLVR_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def export_run(cfg: ExportConfig) -> dict:
    """Validates everything, then writes the export; returns what was written, for the summary line."""
    from rlvr import __version__

    run = Path(cfg.run)
    if not cfg.run:
        raise _run_error("give the run directory to export")
    run_cfg = read_run_config(run)
    source = find_source(cfg, run)
    to = _check_target(cfg, run)
    lora = bool(run_cfg.get("lora_rank", 0))
    if cfg.merge_lora and not lora:
        if run_cfg.get("model") == "tiny" or (run / "final" / "config.json").is_file() and \
                json.loads((run / "final" / "config.json").read_text()).get("backend") == "tiny":
            raise ConfigError("merge_lora", f"{str(run)!r} trained the built-in model, which has no LoRA adapter; "
                                            "drop --merge-lora")
        raise ConfigError("merge_lora", f"{str(run)!r} trained all of its model's weights (no --lora-rank), so its "
                                        "export is already a full model; drop --merge-lora")

    policy = _load(source, run_cfg)
    backend = policy.describe()["backend"]
    extra = {"exported_by": f"rlvr export (rlvr {__version__})", "run": str(run.resolve()), "source": source.label,
             "steps": source.step, "config": run_cfg}
    tmp = to.parent / f".tmp-{to.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        if cfg.merge_lora:
            _save_merged(policy, tmp, extra)
            kind = "a transformers model (LoRA merged) with its tokenizer and chat template"
        else:
            if backend == "hf":
                policy.model.config.use_cache = True  # training switched it off; generation wants it
            policy.save(tmp, extra)
            _absolute_base(tmp)
            kind = {"tiny": "a built-in model directory",
                    "hf": "a LoRA adapter (load it with --model, or peft over its base model)" if lora else
                          "a transformers model with its tokenizer and chat template"}[backend]
        replace_dir(tmp, to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"to": str(to), "source": source.label, "step": source.step, "backend": backend, "kind": kind}


def add_options(parser: argparse.ArgumentParser) -> None:
    """`rlvr export`'s options: RUN positional, the rest flags with their defaults in --help."""
    docs = {f.name: f.metadata["help"] for f in config_fields(ExportConfig)}
    parser.add_argument("run", metavar="RUN", help=docs["run"].split(": ", 1)[1])
    parser.add_argument("--to", required=True, metavar="DIR", help=docs["to"])
    parser.add_argument("--step", type=int, default=-1, metavar="N", help=f"{docs['step']} (default: -1)")
    for name in ("best", "merge_lora", "force"):
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=f"{docs[name]} (default: off)")


def from_args(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(run=args.run, to=args.to, step=args.step, best=args.best, merge_lora=args.merge_lora,
                        force=args.force)
