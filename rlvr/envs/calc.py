"""`calc`: a calculator tool for the arithmetic tasks (add2, arith, mul).

One tool, `calculate(expression)`, evaluates + - * / // % ** and parentheses on integers and
decimals, by walking the expression's syntax tree: names, attributes, calls, strings and every
other construct are refused, so `__import__('os')` is an error the model reads, never code that
runs. Limits keep one call cheap: at most MAX_EXPRESSION_CHARS characters, exponents of at most
MAX_EXPONENT, and no value beyond MAX_DIGITS digits. The environment has no reward of its own:
the task's verifier scores the final answer.
"""
from __future__ import annotations

import ast
import math
import operator

from rlvr.envs.base import ENVS

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_DIGITS = 100

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# Spellings models copy from questions and textbooks: "12 × 34", "8 ÷ 2", "2^10", a typographic minus.
_SPELLINGS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**"}


class CalculatorError(ValueError):
    """The expression cannot be evaluated; the message says why, for the model to read."""


def evaluate(expression: str) -> str:
    """The value of an arithmetic expression as text: "2146" for "37*58", "0.333333333333" for
    "1/3" (12 significant digits); an integral result of a division is written as an integer."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string, e.g. \"37*58\"")
    text = expression.strip().rstrip("=").strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    for spelling, python in _SPELLINGS.items():
        text = text.replace(spelling, python)
    if not text:
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"{expression!r} is not an arithmetic expression") from None
    value = _value(tree.body)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _bounded(_OPERATORS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
    if isinstance(node, ast.Constant):
        raise CalculatorError(f"only numbers are allowed, not {type(node.value).__name__} values")
    if isinstance(node, (ast.Name, ast.Attribute, ast.Call)):
        raise CalculatorError("names, attributes and function calls are not allowed: use numbers, "
                              "+ - * / // % ** and parentheses")
    raise CalculatorError(f"{type(node).__name__} is not allowed: use numbers, + - * / // % ** and parentheses")


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponents above {MAX_EXPONENT} are not allowed")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")


def _bounded(value: int | float | complex) -> int | float:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 3.33:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _example(question: str, expression: str, value: str) -> dict:
    return {"question": f"What is {question}? Answer with just the number.",
            "calls": [{"tool": "calculate", "arguments": {"expression": expression}, "result": value}],
            "answer": value}


@ENVS.register("calc")
class CalculatorEnv:
    """A calculator for arithmetic questions: the model calls calculate(expression), reads the
    value and answers."""

    description = "calculate(expression) for the arithmetic tasks (add2, arith, mul); the task's verifier scores"
    # Questions as the arithmetic tasks ask them (rlvr/tasks/arithmetic.py), one operation each;
    # their problems all lie in the training split, so no example is ever a held-out problem.
    examples = [
        _example("12 × 34", "12*34", "408"),
        _example("457 + 286", "457+286", "743"),
        _example("93 - 158", "93-158", "-65"),
        _example("(15 + 27) × 3", "(15+27)*3", "126"),
    ]

    def reset(self, **item) -> None:
        """Nothing to set up: the calculator keeps no state between calls."""
        return None

    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression on integers and decimals.

        Args:
            expression: The expression, e.g. "37*58" or "(12+30)/4": numbers, + - * / // % ** and parentheses.

        Returns:
            The value, e.g. "2146".
        """
        return evaluate(expression)
