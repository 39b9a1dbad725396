"""Property test: any config file or argument list either validates or exits 2 naming the field.

Each example goes through the real entry point (`rlvr.cli.main(["train", ...])`: argparse, the
TOML loader, TrainConfig.validate()) with the training itself replaced by a stub that stops right
after validation, so a thousand examples take seconds.
"""
import contextlib
import io
import json
import math
import os
import re

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import rlvr.train
from rlvr.train.preflight import check_train_config
from rlvr.cli import main
from rlvr.config import TrainConfig, config_fields

FIELDS = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in config_fields(TrainConfig)}
FLAGS = ["--" + name.replace("_", "-") for name in FIELDS]
NAMED = re.compile(r"rlvr train: error: (--[a-z-]+): |error: argument (--[a-z-]+)|error: unrecognized arguments: ")
SPECIAL = {
    "task": ["arith", "add2", "mul", "nope", "rg:no_such_dataset", "jsonl:", "jsonl:missing.jsonl", ""],
    "reward": ["task", "code_exec", "shaped_rewards:digit_share", "zz_no_module:f", "os:no_function", ":", "a:",
               "", "bogus"],
    "model": ["tiny", "/nonexistent/model", "", "."],
    "device": ["cpu", "cuda", "tpu"], "log": ["jsonl", "", "jsonl,wandb", "jsonl, "],
    "on_collapse": ["warn", "stop", "rollback", "ignore"], "advantage": ["grpo", "dr_grpo", "rloo", "ppo"],
    "loss_agg": ["token-mean", "seq-mean", "token-sum", "mean"], "out": ["runs/x", "", "/proc/forbidden/run"],
}
any_text = st.text(max_size=300)
numbers = st.one_of(st.integers(-10, 100), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, 4, 8, 0.5, 1e-4]))


def value_for(name: str):
    """Mostly plausible values of the field's type, and some of every other type."""
    kind = FIELDS[name]
    plausible = {"int": st.integers(-3, 40), "float": st.floats(-2, 20) | numbers, "bool": st.booleans(),
                 "str": st.sampled_from(SPECIAL.get(name, ["x"])) | any_text}[kind]
    return st.one_of(plausible, plausible, plausible, numbers, st.booleans(), any_text,
                     st.lists(st.integers(), max_size=2))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float, list)):
        return json.dumps(value)
    return json.dumps(value)  # a TOML basic string, \\u escapes included (lone surrogates make it invalid TOML)


configs = st.lists(st.sampled_from(sorted(FIELDS)), max_size=8, unique=True).flatmap(
    lambda names: st.tuples(*[st.tuples(st.just(n), value_for(n)) for n in names]))
argv_token = st.one_of(st.sampled_from(FLAGS), st.sampled_from(["--no-quiet", "--force", "--bogus", "-k", "--"]),
                       numbers.map(str), any_text, st.sampled_from([v for vs in SPECIAL.values() for v in vs]))
arg_lists = st.lists(st.tuples(st.sampled_from(FLAGS), st.one_of(numbers.map(str), any_text, st.sampled_from(
    [v for vs in SPECIAL.values() for v in vs])))).map(lambda pairs: [x for pair in pairs for x in pair]) | \
    st.lists(argv_token, max_size=10)


def run_cli(argv: list[str], monkeypatch_train) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), monkeypatch_train():
        try:
            code = main(["train", *argv])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return code, err.getvalue()


@contextlib.contextmanager
def validate_only():
    """Replaces training by validation only: the CLI path up to and including the checks that
    train() runs first (rlvr.train.preflight.check_train_config)."""
    def train(cfg, *args, **kwargs):
        check_train_config(cfg)
        return {"line": "validated"}

    real = rlvr.train.train
    rlvr.train.train = train
    try:
        yield
    finally:
        rlvr.train.train = real


def check(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    event("validated" if code == 0 else "refused")
    if code == 2:
        match = NAMED.search(err)
        assert match, err
        flag = match.group(1) or match.group(2)
        assert flag is None or flag in FLAGS or flag == "--config", err


@contextlib.contextmanager
def inside(directory):
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(pairs=configs)
def test_random_toml_configs_validate_or_exit_2_naming_the_field(pairs, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "fuzz_toml"
    work.mkdir(exist_ok=True)
    path = work / "run.toml"
    path.write_text("".join(f"{name.replace('_', '-') if i % 2 else name} = {toml_value(v)}\n"
                            for i, (name, v) in enumerate(pairs)), encoding="utf-8", errors="surrogatepass")
    with inside(work):
        check(*run_cli(["--config", str(path)], validate_only))


@FUZZ
@given(argv=arg_lists)
def test_random_argument_lists_validate_or_exit_2_naming_the_field(argv, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "fuzz_argv"
    work.mkdir(exist_ok=True)
    with inside(work):
        check(*run_cli(argv, validate_only))


def test_the_stub_sees_the_same_config_a_real_start_would(tmp_path, monkeypatch):
    """The fuzzed path is the real one: main -> argparse -> TOML -> TrainConfig -> check_train_config."""
    seen = []
    monkeypatch.setattr(rlvr.train, "train", lambda cfg, *a, **k: seen.append(cfg) or {"line": ""})
    (tmp_path / "c.toml").write_text("k = 4\n")
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--steps", "3"]) == 0
    assert seen[0].k == 4 and seen[0].steps == 3
