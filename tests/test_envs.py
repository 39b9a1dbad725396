"""Tests of rlvr.envs: the TRL and OpenEnv contracts, tool-call parsing in both formats,
containment, the built-in environments and the messages that open an episode.

Environment classes come from tests/envs_trl_example.py (the documented TRL class),
tests/envs_bad.py (typed and misbehaving ones) and tests/envs_openenv.py (OpenEnv, when installed).
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

import envs_bad
from rlvr.config import ConfigError
from rlvr.envs import ENVS, TOOL_FORMATS, EnvFailure, EnvTurn, ToolSpec, list_envs, load_env
from rlvr.envs.calc import CalculatorError, evaluate
from rlvr.envs.schema import parse_docstring

ROOT = Path(__file__).resolve().parent.parent
ITEM = {"id": "add2/train/0", "prompt": "37+58=", "question": "What is 37 + 58? Answer with just the number.",
        "answer": "95", "level": 2, "key": "37+58"}


@pytest.fixture(autouse=True)
def release_hung_calls():
    """Each test gets a fresh RELEASE; hung calls end when it does."""
    envs_bad.RELEASE = threading.Event()
    yield
    envs_bad.RELEASE.set()


def episode(spec: str, fmt: str = "hermes", timeout_s: float = 5.0, item: dict | None = None, examples: int = 0):
    env = load_env(spec, examples=examples).new(fmt, timeout_s)
    env.reset(item or ITEM)
    return env


def hermes(tool: str, /, **arguments) -> str:
    import json

    return f"<tool_call>\n{json.dumps({'name': tool, 'arguments': arguments})}\n</tool_call>"


# --- the TRL contract ----------------------------------------------------------------------


def test_the_documented_trl_class_loads_unchanged_with_its_schemas():
    spec = load_env("envs_trl_example:AbacusEnv", examples=2)
    assert spec.name == "envs_trl_example:AbacusEnv" and spec.has_reward
    assert [tool.name for tool in spec.tools()] == ["add", "multiply", "submit"]  # definition order
    add = spec.tools()[0]
    assert add.description == "Add two integers."
    assert add.parameters == {"type": "object", "required": ["a", "b"], "properties": {
        "a": {"type": "integer", "description": "The first number."},
        "b": {"type": "integer", "description": "The second number."}}}
    assert add.as_openai() == {"type": "function", "function": {
        "name": "add", "description": "Add two integers.", "parameters": add.parameters}}
    assert spec.tools()[2].description == "Submit your final answer; this ends the episode."


def test_the_documented_trl_class_plays_an_episode():
    env = load_env("envs_trl_example:AbacusEnv").new("hermes", 5.0)
    assert env.reset({**ITEM, "answer": "408"}) == "Use the abacus, then submit your answer."
    turn = env.step("Let me multiply. " + hermes("multiply", a=12, b=34))
    assert turn == EnvTurn([{"role": "tool", "name": "multiply", "content": "408"}], 1, 0, False)
    assert not env.done and env.reward() == 0.0
    turn = env.step(hermes("submit", answer=408))
    assert turn.done and env.done and env.reward() == 1.0
    env.close()
    env.close()  # idempotent
    assert env.reward() == 1.0 and env.failures == 0  # the reward outlives close()
    with pytest.raises(RuntimeError, match="after close"):
        env.step(hermes("add", a=1, b=2))


def test_the_documented_class_is_in_the_docs_verbatim():
    example = (ROOT / "tests" / "envs_trl_example.py").read_text()
    assert example.strip() in (ROOT / "docs" / "episodes.md").read_text()


def test_schemas_from_type_hints_and_google_docstrings():
    spec = load_env("envs_bad:Typed")
    tools = {tool.name: tool for tool in spec.tools()}
    assert sorted(tools) == ["lookup", "pick"]  # no private, static or property member; not reset
    lookup = tools["lookup"].parameters
    assert tools["lookup"].description == "Look a key up in the table. The table is small."
    assert lookup["required"] == ["key"]
    assert lookup["properties"] == {
        "key": {"type": "string", "description": 'The key to look up, e.g. "apple".'},
        "limit": {"type": "integer", "description": "How many rows to return; the rest are dropped."},
        "scale": {"type": "number", "description": "A factor."},
        "exact": {"type": "boolean", "description": "Whether to match exactly."}}
    pick = tools["pick"].parameters["properties"]
    assert pick["colour"] == {"type": "string", "enum": ["red", "green"], "description": "The colour."}
    assert pick["sizes"] == {"type": "array", "items": {"type": "integer"}, "description": "The sizes."}
    assert pick["note"] == {"type": "string", "nullable": True}
    assert pick["extra"] == {"type": "object", "additionalProperties": {"type": "integer"}, "nullable": True}
    assert not spec.has_reward


def test_docstring_without_sections_is_all_description():
    assert parse_docstring("Do a thing.\n\nIn two paragraphs.") == ("Do a thing. In two paragraphs.", {})
    assert parse_docstring("") == ("", {})


def test_reset_gets_the_item_as_keywords_or_only_the_fields_it_names():
    env = load_env("envs_bad:NamedResetArgs").new("python", 5.0)
    assert env.reset(ITEM) == "answer 95"


@pytest.mark.parametrize("spec, message", [
    ("nonesuch", "unknown environment 'nonesuch'; built-in: calc, guess, or module:Class"),
    ("no_such_module_xyz:Env", "cannot import module 'no_such_module_xyz'"),
    ("envs_bad:Missing", "module 'envs_bad' has no 'Missing'"),
    ("envs_bad:not_a_class", "is a function, not a class"),
    ("envs_bad:NoTools", "no public methods to offer as tools and is not an OpenEnv Environment"),
    ("envs_bad:NoReset", "no reset() method"),
    ("envs_bad:MissingHint", "argument 'x' has no type hint"),
    ("envs_bad:BadExamples", "example 0, call 0: there is no tool 'nope'"),
])
def test_bad_specs_are_config_errors_that_say_the_fix(spec, message):
    with pytest.raises(ConfigError) as caught:
        load_env(spec)
    assert caught.value.field == "env"
    assert message in str(caught.value)


def test_examples_are_at_most_what_the_class_has():
    assert load_env("envs_trl_example:AbacusEnv", examples=3).example_count == 2
    assert load_env("envs_bad:Typed").example_count == 0  # a TRL class without examples works unchanged
    assert load_env("calc", examples=2).example_count == 2
    with pytest.raises(ConfigError, match="--env-examples: must be a whole number"):
        load_env("calc", examples=-1)


# --- parsing: hermes -----------------------------------------------------------------------


def test_hermes_single_and_multiple_calls():
    env = episode("envs_bad:Typed")
    turn = env.step(hermes("lookup", key="apple") + "\nand\n" + hermes("lookup", key="pear", limit=2.0, exact=True))
    assert [m["content"] for m in turn.messages] == ["apple:3:1.0:False", "pear:2:1.0:True"]  # 2.0 -> 2
    assert all(m["role"] == "tool" and m["name"] == "lookup" for m in turn.messages)
    assert (turn.tool_calls, turn.tool_errors, turn.done) == (2, 0, False)


def test_hermes_arguments_as_a_json_string_and_an_unclosed_last_call():
    env = episode("envs_bad:Typed")
    turn = env.step('<tool_call>{"name": "lookup", "arguments": "{\\"key\\": \\"fig\\"}"}</tool_call>')
    assert turn.messages[0]["content"] == "fig:3:1.0:False"
    turn = env.step('<tool_call>{"name": "lookup", "arguments": {"key": "kiwi"}}')  # stopped before </tool_call>
    assert turn.messages[0]["content"] == "kiwi:3:1.0:False" and turn.tool_errors == 0


@pytest.mark.parametrize("text, error", [
    ("<tool_call>{not json}</tool_call>", "the tool call is not valid JSON"),
    ('<tool_call>["lookup"]</tool_call>', 'must be a JSON object with a "name"'),
    (hermes("nope", key="x"), "there is no tool 'nope'; the tools are: lookup, pick"),
    (hermes("lookup", name="x"), "lookup() has no argument 'name'; its arguments are: key, limit, scale, exact"),
    (hermes("lookup"), "lookup() is missing the argument 'key'"),
    (hermes("lookup", key=5), "argument 'key' of lookup() must be a string, got 5 (an integer)"),
    (hermes("lookup", key="x", limit=2.5), "argument 'limit' of lookup() must be an integer, got 2.5"),
    (hermes("lookup", key="x", exact="yes"), "argument 'exact' of lookup() must be true or false"),
    (hermes("pick", colour="blue", sizes=[1]), "argument 'colour' of pick() must be one of ['red', 'green']"),
    (hermes("pick", colour="red", sizes=[1, "2"]), "argument 'sizes' of pick() item 1 must be an integer"),
])
def test_hermes_errors_are_observations_with_the_expected_format(text, error):
    env = episode("envs_bad:Typed")
    turn = env.step(text)
    assert (turn.tool_calls, turn.tool_errors) == (1, 1)
    content = turn.messages[0]["content"]
    assert content.startswith("Error: ") and error in content
    assert "<tool_call>{" in content  # the expected format
    assert env.failures == 0  # the model's mistakes are not the environment's failures


def test_hermes_a_call_without_arguments_may_leave_them_out():
    env = episode("envs_bad:Misbehaving")
    assert env.step('<tool_call>{"name": "count"}</tool_call>').messages[0]["content"] == "42"
    assert env.step('<tool_call>{"name": "count", "arguments": null}</tool_call>').messages[0]["content"] == "42"


def test_a_turn_without_a_call_ends_the_episode():
    env = episode("envs_bad:Typed")
    assert env.step("The answer is 95.") is None
    assert episode("envs_bad:Typed", fmt="python").step('I would call lookup but "95" it is.') is None


# --- parsing: python -----------------------------------------------------------------------


def test_python_calls_positional_keyword_in_backticks_and_several():
    env = episode("envs_bad:Typed", fmt="python")
    turn = env.step('First:\nlookup("apple", 2)\n`lookup(key="pear", exact=True)`\nthen done.')
    assert turn.messages == [{"role": "user", "content": "Result: apple:2:1.0:False\nResult: pear:3:1.0:True"}]
    assert (turn.tool_calls, turn.tool_errors) == (2, 0)
    turn = env.step("pick('red', [1, 2], note=None)")
    assert turn.messages[0]["content"] == 'Result: ["red", [1, 2], null, null]'


def test_python_a_bare_expression_for_a_string_argument_is_its_text():
    env = episode("calc", fmt="python")
    assert env.step("calculate(12*34)").messages[0]["content"] == "Result: 408"
    assert env.step('calculate("37*58")').messages[0]["content"] == "Result: 2146"


@pytest.mark.parametrize("text, error", [
    ('lookup("a", 1, 2.0, True, 5)', "lookup() takes 4 argument(s), got 5"),
    ('lookup("a", limit=1 + 1)', "the argument 'limit' must be a literal value"),
    ('lookup(ky="a")', "lookup() has no argument 'ky'"),
    ('lookup("a", key="b")', "the argument 'key' is given twice"),
    ('lookup(**{"key": "a"})', "write the arguments out"),
    ('lookup("a", limit="two")', "argument 'limit' of lookup() must be an integer, got 'two' (a string)"),
    ('lookup("a" "b" +)', "the call is not valid Python"),
])
def test_python_errors_are_observations_with_the_expected_format(text, error):
    env = episode("envs_bad:Typed", fmt="python")
    turn = env.step(text)
    assert (turn.tool_calls, turn.tool_errors) == (1, 1)
    content = turn.messages[0]["content"]
    assert content.startswith("Error: ") and error in content
    assert "Call a tool alone on its line, as lookup(key: str, limit: int = ..." in content


def test_degenerate_turns_are_error_observations_not_crashes():
    deep = "[" * 50_000
    turn = episode("envs_bad:Typed").step(f'<tool_call>{{"name": "pick", "arguments": {deep}</tool_call>')
    assert turn.tool_errors == 1 and "nested too deeply" in turn.messages[0]["content"]
    for text in (f"pick('red', {deep})", "lookup(" + "9" * 10_000 + ")", "lookup('a\x00')"):
        turn = episode("envs_bad:Typed", fmt="python").step(text)
        assert turn.tool_errors == 1 and turn.messages[0]["content"].startswith("Error: ")


def test_python_a_name_that_is_no_tool_is_text_not_a_call():
    env = episode("calc", fmt="python")
    assert env.step("sqrt(2)") is None
    assert env.step("The answer is calculate(2) maybe") is None


# --- containment ---------------------------------------------------------------------------


def test_a_tool_that_raises_is_an_error_observation_not_a_failure():
    env = episode("envs_bad:Misbehaving")
    turn = env.step(hermes("explode", x=3))
    assert turn.messages[0]["content"] == "Error: explode() failed: ValueError: cannot handle 3"
    assert (turn.tool_errors, env.failures) == (1, 0)
    turn = env.step(hermes("quit"))
    assert turn.messages[0]["content"] == "Error: quit() failed: SystemExit: 3"


def test_a_tool_that_hangs_times_out_and_counts_as_a_failure():
    env = episode("envs_bad:Misbehaving", timeout_s=0.2)
    started = time.monotonic()
    turn = env.step(hermes("sleep") + hermes("count"))
    assert time.monotonic() - started < 2.0
    assert turn.messages[0]["content"] == "Error: sleep() did not finish within 0.2 seconds."
    assert turn.messages[1]["content"] == "42"  # the episode goes on
    assert (turn.tool_calls, turn.tool_errors, env.failures) == (2, 1, 1)
    assert "did not return within --env-timeout 0.2 s" in env.failure_notes[0]


@pytest.mark.parametrize("tool, text, failed", [
    ("data", '{"a": [1, 2], "b": "x"}', False),
    ("count", "42", False),
    ("ratio", "0.5", False),
    ("flag", "True", False),
    ("nothing", "null", False),
    ("thing", "Error: thing() returned a object, which is not text, a number or JSON-serialisable data", True),
])
def test_tool_results_become_text_or_an_error(tool, text, failed):
    env = episode("envs_bad:Misbehaving")
    turn = env.step(hermes(tool))
    assert turn.messages[0]["content"].startswith(text)
    assert (turn.tool_errors, env.failures) == (int(failed), int(failed))


def test_an_async_tool_is_awaited_and_argument_names_never_clash_with_the_containment():
    env = episode("envs_bad:Misbehaving", timeout_s=1.0)
    assert env.step(hermes("later", x=1)).messages[0]["content"] == "2"
    assert env.step(hermes("clash", function="f", timeout_s=9.5)).messages[0]["content"] == "f 9.5"


@pytest.mark.parametrize("spec, message", [
    ("envs_bad:ResetRaises", "reset() raised KeyError: 'no such field' on item 'add2/train/0'; fix its reset()"),
    ("envs_bad:ResetHangs", "reset() did not return within --env-timeout 0.2 s; make it faster or raise --env-timeout"),
    ("envs_bad:ResetReturnsInt", "reset() returned a int, expected the text to append to the question"),
    ("envs_bad:InitRaises", "building InitRaises() raised RuntimeError: no database; the class is built with no "
                            "arguments"),
])
def test_a_broken_reset_is_an_env_failure_naming_the_env(spec, message):
    env = load_env(spec).new("hermes", 0.2)
    started = time.monotonic()
    with pytest.raises(EnvFailure) as caught:
        env.reset(ITEM)
    assert time.monotonic() - started < 2.0
    assert str(caught.value).startswith(f"environment {spec}: ") and message in str(caught.value)


@pytest.mark.parametrize("spec, message", [
    ("envs_bad:RewardNaN", "get_reward() returned nan (float), expected a finite number"),
    ("envs_bad:RewardText", "get_reward() returned '1.0' (str), expected a finite number"),
    ("envs_bad:RewardRaises", "get_reward() raised ZeroDivisionError: no guesses"),
    ("envs_bad:RewardHangs", "get_reward() did not return within --env-timeout 0.2 s"),
])
def test_a_bad_reward_is_an_env_failure(spec, message):
    env = episode(spec, timeout_s=0.2)
    with pytest.raises(EnvFailure, match=f"environment {spec}: ") as caught:
        env.reward()
    assert message in str(caught.value)


def test_a_close_that_hangs_counts_as_a_failure():
    env = episode("envs_bad:CloseHangs", timeout_s=0.2)
    env.close()
    assert env.failures == 1 and "close() did not return within --env-timeout 0.2 s" in env.failure_notes[0]


def test_no_reward_without_get_reward_and_step_before_reset_is_a_bug():
    assert episode("envs_bad:Typed").reward() is None
    with pytest.raises(RuntimeError, match="before reset"):
        load_env("calc").new("hermes", 1.0).step("x")
    with pytest.raises(ValueError, match="unknown tool-call format"):
        load_env("calc").new("json", 1.0)


# --- calc ----------------------------------------------------------------------------------


@pytest.mark.parametrize("expression, value", [
    ("37*58", "2146"), ("12 × 34", "408"), ("93-158", "-65"), ("(15+27)*3", "126"), ("7/2", "3.5"),
    ("8/2", "4"), ("7//2", "3"), ("-7 % 3", "2"), ("2**10", "1024"), ("2^10", "1024"), ("1/3", "0.333333333333"),
    ("1.5 + 2.25", "3.75"), ("10 ÷ 4", "2.5"), ("12*34=", "408"), ("2**-2", "0.25"),
])
def test_calc_values(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression, error", [
    ("__import__('os')", "names, attributes and function calls are not allowed"),
    ("os.system('ls')", "names, attributes and function calls are not allowed"),
    ("x + 1", "names, attributes and function calls are not allowed"),
    ("'a' * 3", "only numbers are allowed"),
    ("[1, 2]", "List is not allowed"),
    ("1 if 2 else 3", "IfExp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("1 / 0", "division by zero"),
    ("2 ** 1000", "exponents above 100"),
    ("99 ** 99", "more than 100 digits"),
    ("(9**50) * (9**50) * (9**50)", "more than 100 digits"),
    ("1" * 201, "longer than 200 characters"),
    ("1e308 * 10", "not a finite number"),
    ("(-8) ** 0.5", "not a real number"),
    ("", "empty"),
    ("12 +", "not an arithmetic expression"),
])
def test_calc_refuses_what_is_not_arithmetic_or_too_big(expression, error):
    with pytest.raises(CalculatorError, match=error.replace("(", r"\(")):
        evaluate(expression)


def test_calc_errors_reach_the_model_as_observations():
    env = episode("calc", fmt="python")
    turn = env.step("calculate(\"__import__('os').system('echo hi')\")")
    assert turn.messages[0]["content"].startswith("Error: calculate() failed: CalculatorError: names, attributes")
    assert (turn.tool_errors, env.failures, env.reward()) == (1, 0, None)


def test_calc_examples_are_distinct_task_shaped_and_in_the_training_split():
    from rlvr.tasks.base import split_of

    examples = load_env("calc", examples=4).examples
    assert len({example["question"] for example in examples}) == 4
    assert len({example["calls"][0]["arguments"]["expression"][2] for example in examples[:3]}) == 3  # * + -
    for example in examples:
        assert example["question"].startswith("What is ") and example["question"].endswith(
            "? Answer with just the number.")
        expression = example["calls"][0]["arguments"]["expression"]
        assert evaluate(expression) == example["calls"][0]["result"] == example["answer"]
        assert split_of(expression) == "train"


# --- guess ---------------------------------------------------------------------------------


def test_guess_finds_the_secret_by_bisection_within_the_budget():
    env = load_env("guess").new("python", 5.0)
    assert env.reset({**ITEM, "answer": "37", "low": 1, "high": 100}) == "You have 7 guesses."
    answers = []
    for number in (50, 25, 37):
        turn = env.step(f"guess({number})")
        answers.append(turn.messages[0]["content"])
    assert answers == ["Result: lower", "Result: higher", "Result: correct"]
    assert turn.done and env.done and env.reward() == 1.0


def test_guess_past_the_budget_scores_zero_and_only_correct_ends_it():
    env = load_env("guess").new("hermes", 5.0)
    env.reset({**ITEM, "answer": 100})
    for _ in range(7):
        assert env.step(hermes("guess", number=1)).messages[0]["content"] == "higher"
    assert not env.done and env.reward() == 0.0
    assert env.step(hermes("guess", number=100)).done
    assert env.reward() == 0.0  # found with the 8th guess, one past the budget of 7


def test_guess_examples_bisect_and_never_show_a_held_out_secret():
    from rlvr.tasks.base import split_of

    for example in load_env("guess", examples=3).examples:
        secret = int(example["answer"].rstrip(".").split()[-1])
        assert example["calls"][0]["arguments"] == {"number": 50}
        assert example["calls"][-1]["result"] == "correct"
        assert split_of(f"guess:{secret}") == "train"


def test_guess_with_the_guess_task_items():
    from rlvr.tasks import get_task

    task = get_task("guess", seed=1)
    item = task.item("train", 0)
    env = load_env("guess").new("python", 5.0)
    env.reset(item)
    low, high = 1, 100
    while True:  # bisection, as the examples show
        middle = (low + high) // 2
        reply = env.step(f"guess({middle})").messages[0]["content"]
        if reply == "Result: correct":
            break
        low, high = (middle + 1, high) if reply == "Result: higher" else (low, middle - 1)
    assert env.reward() == 1.0 and task.score(f"The number is {middle}.", item) == 1.0


def test_built_ins_are_listed_with_one_line_descriptions():
    listed = dict(list_envs())
    assert sorted(listed) == ENVS.names() == ["calc", "guess"]
    assert all(description and "\n" not in description for description in listed.values())


# --- the messages that open an episode -----------------------------------------------------


QUESTION = "What is 5 + 6? Answer with just the number."


@pytest.mark.parametrize("count", [0, 1, 2])
def test_prompt_messages_python(count):
    messages = load_env("calc", examples=count, instructions="tools").prompt_messages(QUESTION, None, "python")
    system = messages[0]
    assert system["role"] == "system"
    assert 'calculate("12*34")' in system["content"]  # the call format, shown with the first example's call
    assert "calculate(expression: str)\n    Evaluate an arithmetic expression" in system["content"]
    assert '"Result: ..."' in system["content"]
    assert len(messages) == 1 + 4 * count + 1
    if count:
        assert messages[1:5] == [
            {"role": "user", "content": "What is 12 × 34? Answer with just the number."},
            {"role": "assistant", "content": 'calculate("12*34")'},
            {"role": "user", "content": "Result: 408"},
            {"role": "assistant", "content": "408"}]
    if count == 2:
        assert messages[5]["content"] == "What is 457 + 286? Answer with just the number."
    assert messages[-1] == {"role": "user", "content": QUESTION}
    assert all(isinstance(m["content"], str) for m in messages)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_env_system_auto_lists_the_tools_only_where_no_example_shows_a_call(count):
    """--env-system auto: the fallback format's system message only when no example conversation
    shows a call (with one, it cut SmolLM2's calls, docs/episodes.md); none: never; tools: always."""
    auto = load_env("calc", examples=count).prompt_messages(QUESTION, None, "python")
    assert (auto[0]["role"] == "system") == (count == 0)
    assert len(auto) == (1 if count == 0 else 0) + 4 * count + 1
    none = load_env("calc", examples=count, instructions="none").prompt_messages(QUESTION, None, "python")
    assert all(m["role"] != "system" for m in none)
    hermes = load_env("calc", examples=count).prompt_messages(QUESTION, None, "hermes")
    assert hermes[0]["role"] == "system"  # hermes: a short one, the tools go through the template
    with pytest.raises(ConfigError, match="env_system|env-system"):
        load_env("calc", examples=count, instructions="maybe")


@pytest.mark.parametrize("count", [0, 1, 2])
def test_prompt_messages_hermes(count):
    messages = load_env("calc", examples=count).prompt_messages(QUESTION, None, "hermes")
    assert messages[0]["role"] == "system" and "calculate" not in messages[0]["content"]  # tools go via tools=
    assert len(messages) == 1 + 4 * count + 1
    if count:
        assert messages[2] == {"role": "assistant", "content":
                               '<tool_call>\n{"name": "calculate", "arguments": {"expression": "12*34"}}\n</tool_call>'}
        assert messages[3] == {"role": "tool", "name": "calculate", "content": "408"}
    assert messages[-1] == {"role": "user", "content": QUESTION}


def test_prompt_messages_append_the_reset_text_and_skip_the_asked_example():
    spec = load_env("calc", examples=2, instructions="tools")
    asked = "What is 12 × 34? Answer with just the number."
    messages = spec.prompt_messages(asked, "Use the calculator.", "python")
    assert messages[1]["content"] == "What is 457 + 286? Answer with just the number."  # 12 × 34 skipped
    assert messages[5]["content"] == "What is 93 - 158? Answer with just the number."
    assert messages[-1]["content"] == asked + "\n\nUse the calculator."
    assert spec.prompt_messages("Q", "\nmore", "hermes")[-1]["content"] == "Q\nmore"


def test_prompt_messages_of_multi_call_examples_alternate_turns():
    messages = load_env("envs_trl_example:AbacusEnv", examples=1, instructions="tools").prompt_messages("Q", None, "python")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user",
                                             "assistant", "user"]
    assert messages[2]["content"] == "multiply(12, 34)" and messages[4]["content"] == "submit(408)"
    assert "add(a: int, b: int)\n    Add two integers.\n    a (int): The first number." in messages[0]["content"]


def test_tool_formats_and_tool_spec_are_the_interface():
    assert TOOL_FORMATS == ("hermes", "python")
    spec = ToolSpec("f", "does f", {"type": "object", "properties": {}, "required": []})
    with pytest.raises(AttributeError):
        spec.name = "g"  # frozen


# --- OpenEnv -------------------------------------------------------------------------------


@pytest.fixture
def openenv():
    pytest.importorskip("openenv.core", reason="openenv-core is not installed (pip install -e \".[openenv]\")")
    import envs_openenv

    return envs_openenv


def test_an_mcp_environment_lists_its_tools_as_tool_specs(openenv):
    spec = load_env("envs_openenv:Scratchpad", examples=1, instructions="tools")
    tools = {tool.name: tool for tool in spec.tools()}
    assert sorted(tools) == ["fail", "read", "write"]
    assert tools["write"].description.startswith("Write a note.")
    assert tools["write"].parameters["properties"]["note"]["type"] == "string"
    assert tools["write"].parameters["required"] == ["note"]
    assert spec.has_reward
    messages = spec.prompt_messages("Q", None, "python")
    assert messages[2]["content"] == 'write("7")' and messages[-1]["content"] == "Q"


def test_an_mcp_environment_runs_calls_as_call_tool_actions(openenv):
    env = load_env("envs_openenv:Scratchpad").new("hermes", 10.0)
    assert env.reset({**ITEM, "answer": "95"}) is None  # the reset observation has no text of its own
    turn = env.step(hermes("write", note="95"))
    assert turn == EnvTurn([{"role": "tool", "name": "write", "content": "ok"}], 1, 0, False)
    turn = env.step(hermes("fail", reason="test") + hermes("write", note=3))
    assert turn.messages[0]["content"].startswith("Error: fail() failed: ") and "failed on purpose: test" in \
        turn.messages[0]["content"]
    assert turn.messages[1]["content"].startswith("Error: argument 'note' of write() must be a string")
    assert (turn.tool_calls, turn.tool_errors, env.failures) == (2, 2, 0)
    assert env.reward() is None  # no step observation has carried a reward yet
    turn = env.step(hermes("read"))
    assert turn.messages[0]["content"] == "95" and turn.done and env.done
    assert env.reward() == 1.0
    assert env.step("It is 95.") is None
    env.close()


def test_a_text_environment_runs_to_done_with_its_rewards(openenv):
    spec = load_env("envs_openenv:CountToThree", examples=0)
    assert spec.tools() == [] and spec.has_reward
    assert spec.prompt_messages("Count.", "Count to three, one number per turn.", "python") == [
        {"role": "user", "content": "Count.\n\nCount to three, one number per turn."}]
    env = spec.new("python", 5.0)
    assert env.reset(ITEM) == "Count to three, one number per turn."
    assert env._instance.episode_id == "add2/train/0"  # the item's id
    replies = [env.step(text) for text in ("1", " 2\n", "4", "3")]
    assert [turn.messages[0]["content"] for turn in replies] == ["right", "right", "wrong", "right"]
    assert [turn.done for turn in replies] == [False, False, False, True]
    assert all((turn.tool_calls, turn.tool_errors) == (1, 0) for turn in replies)
    assert env.done and env.reward() == 3.0


def test_a_text_environment_with_a_structured_action_reads_json(openenv):
    env = load_env("envs_openenv:Board").new("hermes", 5.0)
    assert env.reset(ITEM) is None
    turn = env.step('{"row": 1, "column": 2}')
    assert turn.messages[0]["content"] == '{"moves": 1}' and (turn.tool_errors, turn.done) == (0, False)
    turn = env.step("top left")
    assert turn.messages[0]["content"].startswith("Error: the action could not be read")
    assert '"row", "column"' in turn.messages[0]["content"] and turn.tool_errors == 1
    turn = env.step('```json\n{"row": 0, "column": 0}\n```')
    assert turn.done and env.reward() == 1.0


def test_a_text_environment_whose_action_class_is_unknown_is_refused(openenv):
    with pytest.raises(ConfigError, match="cannot tell which Action class Unannotated.step takes"):
        load_env("envs_openenv:Unannotated")


def test_openenv_is_detected_without_importing_it(monkeypatch):
    """A class that is not OpenEnv's never makes rlvr.envs import openenv."""
    import sys

    from rlvr.envs.openenv_adapter import openenv_kind

    for name in [n for n in sys.modules if n == "openenv" or n.startswith("openenv.")]:
        monkeypatch.delitem(sys.modules, name)
    assert openenv_kind(envs_bad.Typed) is None
    assert not any(n == "openenv" or n.startswith("openenv.") for n in sys.modules)


def test_nan_rewards_from_observations_are_a_failure(openenv):
    from rlvr.envs.openenv_adapter import TextEpisode

    env = load_env("envs_openenv:CountToThree").new("python", 5.0)
    assert isinstance(env, TextEpisode)
    env.reset(ITEM)
    env._rewards.append(math.nan)
    with pytest.raises(EnvFailure, match="expected a finite number"):
        env.reward()
