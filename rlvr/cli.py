"""`rlvr train | eval | pretrain | tasks`: parse options, build a validated config, dispatch.

Options are generated from the config dataclasses, so every field has a flag with its default
and doc in --help. Exit codes: 0 done, 1 the run failed, 2 bad input (named field, no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import (ConfigError, RunFailed, TrainConfig, add_fields, build, check_basic_values, check_episodes,
                         check_truncation, check_writable, config_fields, load_toml, opt, option_group,
                         require_positive)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: exit 2 with usage, like ours
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass
class EvalConfig:
    model: str = opt("tiny", "model to evaluate: 'tiny' (built-in), 'smollm2', a .gguf file, or a model directory "
                             "(transformers, LoRA adapter, or a run's final/)")
    run: str = opt("", "a run directory: evaluates its final/ model on its task with its prompt settings "
                       "(overrides --model, --task, --answer-format, --chat-template, --system-prompt)")
    task: str = opt("arith", "task whose held-out split is evaluated")
    prompt_key: str = opt("prompt", "hf: tasks: the column holding the prompt")
    answer_key: str = opt("answer", "hf: tasks: the column holding the reference answer")
    split: str = opt("train", "hf: tasks: the split the held-out problems are carved from (without --eval-split)")
    eval_split: str = opt("", "hf: tasks: the split evaluated ('' = ~10% of --split, carved by a hash of the prompt)")
    answer_format: str = opt("auto", "how the final answer is stated and read: auto (the task's own), last-number, "
                                     "boxed, answer-tag or last-line")
    chat_template: str = opt("auto", "auto: chat models get the chat template and a natural-language question; "
                                     "none: the raw prompt")
    system_prompt: str = opt("", "system message for chat models ('' = the chat template's default)")
    reward: str = opt("task", "the verifier that decides which completions are correct (score 1): 'task' (the "
                              "task's own; code_exec for humaneval), 'code_exec', 'math_verify', 'format' or "
                              "module:function")
    reward_workers: int = opt(2, "verifier worker processes (0 = call it in this process: no timeout)")
    reward_timeout: float = opt(10.0, "seconds one verifier call may take; then it counts as wrong and is counted")
    code_program: str = opt("auto", "the program code_exec runs for HumanEval-form items: prompt+completion, "
                                    "completion, or auto (by the model: chat template or not)")
    samples: int = opt(16, "n: samples per problem")
    k: list = opt([1, 4, 8], "k values of pass@k / hm@k (each ≤ --samples)")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy only makes pass@1 meaningful)")
    top_k: int = opt(0, "sample from the k most probable tokens only, renormalised (0 = off)")
    top_p: float = opt(1.0, "nucleus sampling: the smallest set of most probable tokens holding this mass (1 = off)")
    min_p: float = opt(0.0, "keep the tokens with at least this fraction of the largest probability (0 = off)")
    problems: int = opt(500, "held-out problems: the first M distinct ones of the split (all of them when it has fewer)")
    max_new_tokens: int = opt(8, "longest completion in tokens")
    seed: int = opt(0, "sampling seed")
    engine: str = opt("rlvr", "what samples: rlvr (its own decode loop) or vllm (vLLM in this process; Hugging Face "
                              "models, docs/engines.md)")
    engine_dtype: str = opt("auto", "--engine vllm: bfloat16 or float32 (auto: float32 on CPU, bfloat16 on CUDA)")
    engine_memory: float = opt(0.0, "--engine vllm: on CUDA the share of GPU memory it may take (0 = 0.3), on CPU its "
                                    "KV cache in GiB (0 = sized to the batch)")
    engine_tp: int = opt(1, "--engine vllm with several ranks: ranks that share one tensor-parallel engine (CUDA; "
                            "1 = an engine on every rank)")
    # episodes (docs/episodes.md): pass@k / HM@k over whole episodes, their final answers scored
    env: str = opt("", "sample episodes with an environment: a built-in (calc, guess; `rlvr tasks` lists them) or "
                       "module:Class (a TRL environment_factory class or an OpenEnv Environment); '' = single "
                       "completions")
    env_examples: int = opt(1, "--env: example conversations placed before the question (a model whose chat template "
                               "has no tool-call format learns the call format from them)")
    env_system: str = opt("auto", "--env: the system message that opens an episode: tools (lists the tools and the "
                                  "call format), none, or auto (tools, unless example conversations show the calls of "
                                  "the fallback format: docs/episodes.md)")
    env_timeout: float = opt(10.0, "--env: seconds one environment call (reset, a tool, get_reward) may take; "
                                   "then it counts as a failure")
    max_turns: int = opt(4, "--env: model turns per episode at most; an episode still calling tools then is "
                            "truncated")
    episode_tokens: int = opt(0, "--env: model and environment tokens per episode after the prompt at most "
                                 "(0 = up to the model's context); --max-new-tokens bounds each model turn")
    out: str = opt("eval.json", "where to write eval.json")
    device: str = opt("cpu", "cpu or cuda")
    nproc: int = opt(1, "processes (ranks) to launch on this machine, each sampling a share of the problems; "
                        "eval.json is the same as with 1 (under torchrun: leave it at 1)")
    dist_timeout: float = opt(600.0, "seconds a collective waits for the other ranks before the evaluation fails")

    HELP_GROUPS = {  # rlvr.config.HELP_GROUP_DOCS
        "model and data": ("model", "run", "task", "prompt_key", "answer_key", "split", "eval_split", "answer_format",
                           "chat_template", "system_prompt", "reward", "reward_workers", "reward_timeout",
                           "code_program"),
        "sampling and engine": ("temperature", "top_k", "top_p", "min_p", "max_new_tokens", "engine", "engine_dtype",
                                "engine_memory", "engine_tp"),
        "episodes": ("env", "env_examples", "env_system", "env_timeout", "max_turns", "episode_tokens"),
        "evaluation": ("samples", "k", "problems"),
        "run and logging": ("seed", "out"),
        "processes": ("device", "nproc", "dist_timeout"),
    }

    def resolve_run(self) -> None:
        if not self.run:
            return
        config_file = Path(self.run) / "config.json"
        if not config_file.is_file() or not (Path(self.run) / "final").is_dir():
            raise ConfigError("run", f"{self.run!r} is not a finished run directory (config.json and final/)")
        run_cfg = json.loads(config_file.read_text())["config"]
        self.model, self.task = str(Path(self.run) / "final"), run_cfg["task"]
        if self.reward == "task":  # the run's own evaluation verifier, unless another is asked for
            from rlvr.rewards import evaluation_verifier

            self.reward = evaluation_verifier(run_cfg.get("reward", "task"), run_cfg.get("eval_reward", ""))
        self.max_new_tokens = run_cfg["max_new_tokens"]
        for name in ("answer_format", "chat_template", "system_prompt", "prompt_key", "answer_key", "split",
                     "eval_split", "code_program", "top_k", "top_p", "min_p"):  # absent from runs before they existed
            setattr(self, name, run_cfg.get(name, getattr(self, name)))

    def validate(self) -> None:
        """Every check of `rlvr eval`, before any work starts: the values, then the model, the
        task and the processes (the checks of rlvr.backends, rlvr.tasks and rlvr.distributed)."""
        from rlvr.distributed import check_processes, launched_world_size
        from rlvr.rewards import check_reward
        from rlvr.rollout.engines import EngineSettings, check_engine
        from rlvr.rollout.episodes import check_env
        from rlvr.train.preflight import check_model_and_task

        check_basic_values(self)
        self.resolve_run()
        if Path(self.out).is_dir():
            raise ConfigError("out", f"{self.out!r} is a directory; --out is the file eval.json is written to, "
                                     f"e.g. {str(Path(self.out) / 'eval.json')!r}")
        require_positive(self, ("samples", "problems", "max_new_tokens"))
        check_episodes(self)
        if not self.k:
            raise ConfigError("k", "give at least one k")
        for k in self.k:
            if k < 1 or k > self.samples:
                raise ConfigError("k", f"k={k} needs 1 ≤ k ≤ --samples ({self.samples}); ask for more "
                                       "samples or a smaller k")
        if not self.temperature >= 0:
            raise ConfigError("temperature", f"must be ≥ 0, got {self.temperature}")
        check_truncation(self)
        if self.reward_workers < 0:
            raise ConfigError("reward_workers", f"must be 0 or more, got {self.reward_workers}")
        if not self.reward_timeout > 0:
            raise ConfigError("reward_timeout", f"must be > 0 seconds, got {self.reward_timeout}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError("device", f"must be cpu or cuda, got {self.device!r}")
        check_processes(self.nproc, self.dist_timeout, self.device)
        check_model_and_task(self, splits=("heldout",))
        check_engine(EngineSettings.of(self), self.model, ranks=launched_world_size() or self.nproc)
        check_reward(self.reward, self.task)
        check_env(self)
        check_writable(str(Path(self.out).parent) if Path(self.out).parent != Path("") else ".", "out")


def _launch_ranks(cfg, args, check) -> int | None:
    """`--nproc N` (N > 1) outside torchrun: `check(cfg)` validates the config here (exit 2
    before any process starts), then this same command runs as N ranks; returns their exit code.
    None: this process runs the command itself (one process, or one rank of a launched run)."""
    from rlvr.distributed import launch, launched_world_size

    if cfg.nproc <= 1 or launched_world_size() is not None:
        return None
    check(cfg)
    return launch(cfg.nproc, [args.command, *args.argv], args.command)


def cmd_train(args) -> int:
    from rlvr.train import train
    from rlvr.train.preflight import check_train_config

    cfg = build(TrainConfig, args)
    code = _launch_ranks(cfg, args, check_train_config)
    if code is not None:
        return code
    summary = train(cfg)
    if summary:  # ranks other than 0 return {}
        print(f"rlvr train: {summary['line']}")
    return 0


def cmd_eval(args) -> int:
    from rlvr import distributed

    cfg = build(EvalConfig, args)
    code = _launch_ranks(cfg, args, EvalConfig.validate)
    if code is not None:
        return code
    cfg.validate()
    world = distributed.start(cfg.device, cfg.dist_timeout)
    try:
        return _evaluate(cfg, world)
    finally:
        distributed.stop(world)


def _evaluate(cfg: "EvalConfig", world) -> int:
    """`rlvr eval` in this process: with W ranks each samples its shard of the problems, and rank
    0 writes eval.json from every rank's per-problem results (the same file as 1 process)."""
    from rlvr.backends import ModelSettings, load_policy
    from rlvr.eval.runner import evaluate_policy, sampling_record
    from rlvr.rewards.pool import RewardPool, WorkerStartError
    from rlvr.rollout.engines import EngineSettings, open_engine
    from rlvr.tasks import get_task
    from rlvr.train.preflight import resolved_task_options
    from rlvr.types import Truncation

    policy = load_policy(cfg.model, ModelSettings.of(cfg))
    options = resolved_task_options(cfg)
    task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format, options=options)
    try:
        pool = RewardPool(cfg.reward, cfg.task, cfg.seed, cfg.reward_workers, cfg.reward_timeout, cfg.answer_format,
                          options)
    except WorkerStartError as err:
        raise ConfigError("reward", f"the reward workers could not load it: {err}") from None
    try:
        engine = open_engine(EngineSettings.of(cfg), cfg.model, policy, max_new_tokens=cfg.max_new_tokens,
                             rows=policy.decode_batch_rows, world=world)
    except ConfigError:
        pool.close()
        raise
    with pool:
        try:
            result = evaluate_policy(policy, task, problems=cfg.problems, samples=cfg.samples, ks=cfg.k,
                                     temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                     world=world, pool=pool, truncation=Truncation.of(cfg), engine=engine)
        finally:
            engine.close()
    if not world.main:
        return 0
    failures = sum(record.get("verifier_failures", 0) for record in result["per_problem"])
    report = {"model": cfg.model, "task": cfg.task, "answer_format": task.answer_format.name,
              "split": "heldout", "verifier": cfg.reward, "engine": cfg.engine,
              **({"env": cfg.env, "env_examples": cfg.env_examples, "max_turns": cfg.max_turns} if cfg.env else {}),
              **({"code_program": options["code_program"]} if getattr(task, "verifier", "task") == "code_exec" else {}),
              "verifier_failures": failures, "n_samples": cfg.samples, "temperature": cfg.temperature,
              **sampling_record(Truncation.of(cfg)), "n_problems": len(result["per_problem"]), **result}
    Path(cfg.out).write_text(json.dumps(report, indent=1) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.model} on {cfg.task} (held-out, n={cfg.samples} samples at T={cfg.temperature})")
    for column in ("metric", "value", "95% CI", "problems"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in result["metrics"].items():
        table.add_row(name, f"{m['value']:.3f}", f"[{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]", str(m["n"]))
    Console().print(table)
    if len(result["per_problem"]) < cfg.problems:
        print(f"the held-out split of {cfg.task} has {len(result['per_problem'])} distinct problems "
              f"(--problems {cfg.problems} asked for more)")
    if failures:
        print(f"{failures} verifier calls failed (raised, timed out or crashed) and count as wrong; "
              "eval.json's per_problem records say where")
    print(f"wrote {cfg.out}")
    return 0


def cmd_pretrain(args) -> int:
    from rlvr.train.pretrain import PretrainConfig, pretrain

    cfg = build(PretrainConfig, args)
    cfg.validate()
    recipe = pretrain(cfg)
    print(f"rlvr pretrain: {recipe['how']}; {recipe['steps']} steps in {recipe['seconds']} s on "
          f"{recipe['torch_threads']} threads; held-out greedy accuracy {recipe['heldout_greedy_accuracy']:.3f}, "
          f"sampled (T=1) {recipe['heldout_sampled_accuracy']:.3f} on {recipe['eval_problems']} problems -> {cfg.out}")
    return 0


def cmd_compare(args) -> int:
    from rlvr.study.compare import CompareConfig, preset_path, run_compare

    # defaults <- --preset <- --config <- command-line flags
    values = load_toml(preset_path(args.preset), CompareConfig, TrainConfig) if args.preset else {}
    values.update(load_toml(args.config, CompareConfig, TrainConfig) if args.config else {})
    given = {name: getattr(args, name) for name in vars(args)
             if name not in ("config", "preset", "handler", "command", "argv")}
    values.update(given)
    compare_names = {f.name for f in config_fields(CompareConfig)}
    cc = CompareConfig(**{k: v for k, v in values.items() if k in compare_names})
    base = {k: v for k, v in values.items() if k not in compare_names}
    command = "rlvr compare " + " ".join(shlex.quote(a) for a in (args.argv or []))
    summary, failed = run_compare(cc, base, command=command.strip())
    for arm, seed, message in failed:
        print(f"rlvr compare: {arm} seed {seed} FAILED: {message}", file=sys.stderr)
    if summary is not None:
        _print_report(summary, "rlvr compare: report", cc.out)
    return 1 if failed or summary is None else 0


def cmd_export(args) -> int:
    from rlvr.train.export import export_run, from_args

    done = export_run(from_args(args))
    step = "" if done["step"] is None else f" (step {done['step']})"
    print(f"rlvr export: {args.run} {done['source']}{step} -> {done['to']}: {done['kind']}; "
          f"load it with --model {done['to']}")
    return 0


def _export_options(parser: argparse.ArgumentParser) -> None:
    from rlvr.train.export import add_options

    add_options(parser)


def cmd_report(args) -> int:
    from rlvr.study.report import ReportError, build_report

    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else "report")
    context = {}
    compare_file = Path(args.dirs[0]) / "compare.json"
    if len(args.dirs) == 1 and compare_file.is_file():
        recorded = json.loads(compare_file.read_text())
        context = {"command": recorded.get("command"), "machine": recorded.get("machine"),
                   "jobs": recorded.get("compare", {}).get("jobs", 1)}
    try:
        summary = build_report(args.dirs, out, context)
    except ReportError as err:  # names the directory and what is missing; no option to name
        print(f"rlvr report: error: {err}", file=sys.stderr)
        return 2
    _print_report(summary, "rlvr report:", out)
    return 0


def _print_report(summary: dict, prefix: str, out: str) -> None:
    """The verdicts, one line each, then where the report is."""
    for v in summary["verdicts"]:
        print(f"  {v['verdict']:<12} {v['claim']}")
    print(f"{prefix} {Path(out) / 'report.html'} (and report.md, summary.json, plots/)")


def cmd_plan(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlvr.study.plan import PlanConfig, noise_reading, run_plan

    cfg = build(PlanConfig, args)
    rows = run_plan(cfg)
    table = Table(title=f"rlvr plan: {cfg.model} on {cfg.task}, B={cfg.prompts_per_step} prompts per step "
                        f"(cost: median of {cfg.steps - 1} timed steps; signal: pilot of {rows[0]['pilot_prompts']} "
                        f"prompts × {rows[0]['pilot_samples']} samples)")
    for col in ("K", "s/step", "×", "step MiB", "×", "zero-signal [95% CI]", "signal groups/step", "s/signal group",
                "B_simple [prompts]"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["k"]), f"{r['step_seconds']:.3f}", f"{r['step_time_ratio']:.2f}",
                      f"{r['step_memory_mib']:.0f}", "n/a" if r["step_memory_ratio"] is None else f"{r['step_memory_ratio']:.2f}",
                      f"{r['zero_signal_frac']:.2f} [{r['zero_signal_ci'][0]:.2f}, {r['zero_signal_ci'][1]:.2f}]",
                      f"{r['signal_groups_per_step']:.1f}",
                      "n/a" if r["seconds_per_signal_group"] is None else f"{r['seconds_per_signal_group']:.3f}",
                      "n/a" if r["noise_scale"] is None else f"{r['noise_scale']:.1f}")
    Console().print(table)
    print(noise_reading(rows, cfg.prompts_per_step))
    if cfg.out:
        print(f"wrote {cfg.out}")
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
    print("a data set on disk: hf:<path> (save_to_disk directory, parquet, JSON/JSONL or CSV; --prompt-key, "
          "--answer-key, --split, --eval-split; docs/data.md)")
    from rlvr.envs import list_envs

    print("environments for episodes, as --env <name> (docs/episodes.md):")
    for name, description in list_envs():
        print(f"  {name:<10} {description}")
    print("your own environment: --env module:Class (a TRL environment_factory class, or an OpenEnv Environment)")
    return 0


def _fields_of(load_class):
    """Options generated from a config class; `load_class` imports it only when the parser is built."""
    return lambda parser: add_fields(parser, load_class())


def _compare_options(parser: argparse.ArgumentParser) -> None:
    from rlvr.study.compare import OWNED, CompareConfig, preset_names

    add_fields(parser, CompareConfig, config_flag=False)
    option_group(parser, "comparison").add_argument(
        "--preset", default=None, metavar="NAME",
        help="start from a shipped study's settings (rlvr/study/presets/NAME.toml; --config and flags "
             f"override them): {', '.join(preset_names())}")
    add_fields(parser, TrainConfig, skip=tuple(OWNED) + ("seed",))
    option_group(parser, "run and logging").add_argument("--seed", type=int, default=argparse.SUPPRESS,
                                                         help="first seed (default: 0)")


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="comparison or run directories")
    parser.add_argument("--out", default=None, help="where to write the report (default: DIR when one is given, "
                                                    "else ./report)")


def _pretrain_config():
    from rlvr.train.pretrain import PretrainConfig

    return PretrainConfig


def _plan_config():
    from rlvr.study.plan import PlanConfig

    return PlanConfig


# name -> (handler, how its options are added, one-line doc)
COMMANDS = {
    "train": (cmd_train, _fields_of(lambda: TrainConfig), "one RL run -> a run directory"),
    "eval": (cmd_eval, _fields_of(lambda: EvalConfig),
             "HM@k / pass@k of a model or run on a task's held-out split -> eval.json"),
    "pretrain": (cmd_pretrain, _fields_of(_pretrain_config), "reproduce the shipped tiny checkpoint from scratch"),
    "tasks": (cmd_tasks, lambda parser: None, "list the tasks"),
    "plan": (cmd_plan, _fields_of(_plan_config),
             "per K: measured step time and memory, expected share of groups with no signal"),
    "compare": (cmd_compare, _compare_options,
                "train K=8 vs K=16 (and variants) on the same seeds and prompts -> report"),
    "report": (cmd_report, _report_options, "(re)build a comparison report from run directories"),
    "export": (cmd_export, _export_options,
               "a run's final/, best/ or checkpoint -> a directory transformers or --model loads"),
}


def build_parser() -> argparse.ArgumentParser:
    from rlvr import __version__

    parser = _Parser(prog="rlvr", description="Reinforcement learning with verifiable rewards; see README.md.")
    parser.add_argument("--version", action="version", version=f"rlvr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (handler, add_options, doc) in COMMANDS.items():
        command = sub.add_parser(name, help=doc, description=doc)
        add_options(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])
    # One rank of a distributed run (docs/distributed.md): messages name the rank; an error that
    # every rank reaches alike is printed by rank 0 only; each failure is also recorded where the
    # launcher (torchrun, or --nproc) reads it, so it can name the rank that failed first.
    size = int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1  # distributed.launched_world_size
    rank = int(os.environ["RANK"]) if size > 1 else 0
    where = f" (rank {rank} of {size})" if size > 1 else ""

    def fail(kind: str, text: str, code: int, everywhere: bool = True, secondary: bool = False) -> int:
        if rank == 0 or not everywhere:
            print(f"rlvr {args.command}: {kind}{where}: {text}", file=sys.stderr)
        if size > 1:
            from rlvr.distributed import record_failure

            record_failure(text, code, secondary, every_rank=everywhere)
        return code

    try:
        return args.handler(args)
    except ConfigError as err:
        return fail("error", str(err), 2)
    except RunFailed as err:
        from rlvr.distributed import CollectiveFailed

        return fail("failed", str(err), 1, everywhere=err.every_rank, secondary=isinstance(err, CollectiveFailed))
    except KeyboardInterrupt:
        return fail("interrupted", "re-run the same command to resume", 1)
    except Exception as err:  # a bug: the traceback follows; the launcher learns which rank failed and why
        if size > 1:
            from rlvr.distributed import record_failure

            record_failure(f"{type(err).__name__}: {err}", 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
