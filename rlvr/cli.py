"""`rlvr train | eval | pretrain | tasks`: parse options, build a validated config, dispatch.

Options are generated from the config dataclasses, so every field has a flag with its default
and doc in --help. Exit codes: 0 done, 1 the run failed, 2 bad input (named field, no traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import (ConfigError, RunFailed, TrainConfig, check_basic_values, check_model_path, check_task,
                         check_writable, config_fields, load_toml, opt)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: exit 2 with usage, like ours
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_fields(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per config field; defaults are SUPPRESSed so we can tell what was given."""
    defaults = cls()
    for f in config_fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default: {default})"
        type_name = f.type if isinstance(f.type, str) else f.type.__name__
        if type_name == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif type_name.startswith("list"):
            parser.add_argument(flag, nargs="+", type=int, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(type_name, str),
                                default=argparse.SUPPRESS, help=help_text,
                                metavar={"int": "N", "float": "X"}.get(type_name, "VALUE"))
    parser.add_argument("--config", default=None, metavar="FILE.toml",
                        help="read settings from a TOML file; flags given on the command line override it")


def _build(cls, args: argparse.Namespace):
    """defaults <- --config file <- command-line flags."""
    values = load_toml(args.config, cls) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in config_fields(cls) if hasattr(args, f.name)})
    return cls(**values)


@dataclass
class EvalConfig:
    model: str = opt("tiny", "model to evaluate: 'tiny' (shipped) or a model directory (e.g. a run's final/)")
    run: str = opt("", "a run directory: evaluates its final/ model on its task (overrides --model/--task)")
    task: str = opt("arith", "task whose held-out split is evaluated")
    samples: int = opt(16, "n: samples per problem")
    k: list = opt([1, 4, 8], "k values of pass@k / hm@k (each ≤ --samples)")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy only makes pass@1 meaningful)")
    problems: int = opt(500, "held-out problems (the first M of the split)")
    max_new_tokens: int = opt(8, "longest completion in tokens")
    seed: int = opt(0, "sampling seed")
    out: str = opt("eval.json", "where to write eval.json")
    device: str = opt("cpu", "cpu or cuda")

    def resolve_run(self) -> None:
        if not self.run:
            return
        config_file = Path(self.run) / "config.json"
        if not config_file.is_file() or not (Path(self.run) / "final").is_dir():
            raise ConfigError("run", f"{self.run!r} is not a finished run directory (config.json and final/)")
        run_cfg = json.loads(config_file.read_text())["config"]
        self.model, self.task = str(Path(self.run) / "final"), run_cfg["task"]
        self.max_new_tokens = run_cfg["max_new_tokens"]

    def validate(self) -> None:
        check_basic_values(self)
        self.resolve_run()
        for name in ("samples", "problems", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if not self.k:
            raise ConfigError("k", "give at least one k")
        for k in self.k:
            if k < 1 or k > self.samples:
                raise ConfigError("k", f"k={k} needs 1 ≤ k ≤ --samples ({self.samples}); ask for more "
                                       "samples or a smaller k")
        if not self.temperature >= 0:
            raise ConfigError("temperature", f"must be ≥ 0, got {self.temperature}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError("device", f"must be cpu or cuda, got {self.device!r}")
        check_model_path(self.model)
        check_task(self.task, self.seed, self.max_new_tokens, self.model)
        check_writable(str(Path(self.out).parent) if Path(self.out).parent != Path("") else ".", "out")


def cmd_train(args) -> int:
    from rlvr.trainer import train

    cfg = _build(TrainConfig, args)
    summary = train(cfg)
    print(f"rlvr train: {summary['line']}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from rlvr.backends.tiny import ByteTokenizer, load_policy
    from rlvr.evaluation import evaluate_policy
    from rlvr.tasks import get_task

    cfg = _build(EvalConfig, args)
    cfg.validate()
    model = load_policy(cfg.model).to(torch.device(cfg.device))
    task = get_task(cfg.task, seed=cfg.seed)
    result = evaluate_policy(model, ByteTokenizer(), task, problems=cfg.problems, samples=cfg.samples, ks=cfg.k,
                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    report = {"model": cfg.model, "task": cfg.task, "split": "heldout", "n_samples": cfg.samples,
              "temperature": cfg.temperature, "n_problems": cfg.problems, **result}
    Path(cfg.out).write_text(json.dumps(report, indent=1) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.model} on {cfg.task} (held-out, n={cfg.samples} samples at T={cfg.temperature})")
    for column in ("metric", "value", "95% CI", "problems"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in result["metrics"].items():
        table.add_row(name, f"{m['value']:.3f}", f"[{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]", str(m["n"]))
    Console().print(table)
    print(f"wrote {cfg.out}")
    return 0


def cmd_pretrain(args) -> int:
    from rlvr.pretrain import PretrainConfig, pretrain

    cfg = _build(PretrainConfig, args)
    cfg.validate()
    recipe = pretrain(cfg)
    print(f"rlvr pretrain: {recipe['how']}; {recipe['steps']} steps in {recipe['seconds']} s on "
          f"{recipe['torch_threads']} threads; held-out greedy accuracy {recipe['heldout_greedy_accuracy']:.3f}, "
          f"sampled (T=1) {recipe['heldout_sampled_accuracy']:.3f} on {recipe['eval_problems']} problems -> {cfg.out}")
    return 0


def cmd_tasks(args) -> int:
    from rlvr.tasks import DEFAULT_TASK, list_reasoning_gym, list_tasks

    print("built-in tasks:")
    for name, description in list_tasks():
        print(f"  {name:<10} {description}{'  (default)' if name == DEFAULT_TASK else ''}")
    rg = list_reasoning_gym()
    if rg:
        print(f"reasoning-gym tasks ({len(rg)}), as rg:<name>:")
        print("  " + ", ".join(rg))
    else:
        print('reasoning-gym tasks: not installed (pip install -e ".[all]"), then rg:<name>')
    print("your own data: jsonl:<path> (one {\"prompt\", \"answer\"} object per line)")
    return 0


COMMANDS = {
    "train": (cmd_train, TrainConfig, "one RL run -> a run directory"),
    "eval": (cmd_eval, EvalConfig, "HM@k / pass@k of a model or run on a task's held-out split -> eval.json"),
    "pretrain": (None, None, "reproduce the shipped tiny checkpoint from scratch"),
    "tasks": (cmd_tasks, None, "list the tasks"),
}


def build_parser() -> argparse.ArgumentParser:
    from rlvr import __version__
    from rlvr.pretrain import PretrainConfig

    parser = _Parser(prog="rlvr", description="Reinforcement learning with verifiable rewards; see README.md.")
    parser.add_argument("--version", action="version", version=f"rlvr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (handler, cls, doc) in COMMANDS.items():
        if name == "pretrain":
            handler, cls = cmd_pretrain, PretrainConfig
        p = sub.add_parser(name, help=doc, description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter
                           if cls is None else argparse.HelpFormatter)
        if cls is not None:
            _add_fields(p, cls)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"rlvr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"rlvr {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rlvr {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
