"""Environment classes for the tests of rlvr.envs: typed tools, and ones that misbehave on purpose.

A hanging call waits on RELEASE, which the tests replace and set when they end, so no thread
outlives its test by more than a moment."""
from __future__ import annotations

import math
import threading
from typing import Literal, Optional

RELEASE = threading.Event()


def hang() -> None:
    RELEASE.wait(30)


class Typed:
    """Tools with every kind of argument the schema reader knows."""

    def reset(self, answer, **item) -> None:
        self.answer = answer

    def lookup(self, key: str, limit: int = 3, scale: float = 1.0, exact: bool = False) -> str:
        """Look a key up in the table.

        The table is small.

        Args:
            key: The key to look up, e.g. "apple".
            limit (int): How many rows to return; the rest
                are dropped.
            scale: A factor.
            exact: Whether to match exactly.

        Returns:
            The rows found.
        """
        return f"{key}:{limit}:{scale}:{exact}"

    def pick(self, colour: Literal["red", "green"], sizes: list[int], note: Optional[str] = None,
             extra: dict[str, int] | None = None) -> list:
        """Pick things.

        Args:
            colour: The colour.
            sizes: The sizes.
        """
        return [colour, sizes, note, extra]

    def _helper(self) -> None:
        """Private: never a tool."""

    @staticmethod
    def util(x: int) -> int:
        """Static: TRL does not take it, nor does rlvr."""
        return x

    @property
    def state(self) -> int:
        return 0


class Misbehaving:
    """Tools that raise, hang, or return what is not text."""

    def reset(self, **item) -> str:
        return "ready"

    def explode(self, x: int) -> str:
        """Raises."""
        raise ValueError(f"cannot handle {x}")

    def sleep(self) -> str:
        """Hangs until the test releases it."""
        hang()
        return "woke"

    def thing(self) -> object:
        """Returns an object."""
        return object()

    def data(self) -> dict:
        """Returns a dict."""
        return {"a": [1, 2], "b": "x"}

    def count(self) -> int:
        """Returns an int."""
        return 42

    def ratio(self) -> float:
        """Returns a float."""
        return 0.5

    def flag(self) -> bool:
        """Returns a bool."""
        return True

    def nothing(self) -> None:
        """Returns None."""

    def quit(self) -> SystemExit:
        """Raises SystemExit."""
        raise SystemExit(3)

    def clash(self, function: str, timeout_s: float) -> str:
        """Arguments named like the containment's own.

        Args:
            function: A name.
            timeout_s: A number.
        """
        return f"{function} {timeout_s}"

    async def later(self, x: int) -> int:
        """An async tool.

        Args:
            x: A number.
        """
        return x + 1


class ResetRaises:
    def reset(self, **item):
        raise KeyError("no such field")

    def tool(self) -> str:
        """A tool."""
        return ""


class ResetHangs(ResetRaises):
    def reset(self, **item):
        hang()


class ResetReturnsInt(ResetRaises):
    def reset(self, **item):
        return 7


class InitRaises(ResetRaises):
    def __init__(self):
        raise RuntimeError("no database")


class RewardNaN(ResetRaises):
    def reset(self, **item):
        return None

    def get_reward(self) -> float:
        return math.nan


class RewardText(RewardNaN):
    def get_reward(self):
        return "1.0"


class RewardRaises(RewardNaN):
    def get_reward(self):
        raise ZeroDivisionError("no guesses")


class RewardHangs(RewardNaN):
    def get_reward(self):
        hang()
        return 1.0


class CloseHangs(RewardNaN):
    def close(self):
        hang()


class NoTools:
    def reset(self, **item):
        return None

    def get_reward(self) -> float:
        return 0.0


class NoReset:
    def tool(self) -> str:
        """A tool."""
        return ""


class MissingHint:
    def reset(self, **item):
        return None

    def tool(self, x) -> str:
        """A tool whose argument has no type hint."""
        return ""


class BadExamples(ResetRaises):
    examples = [{"question": "q", "calls": [{"tool": "nope", "arguments": {}, "result": "r"}], "answer": "a"}]


class NamedResetArgs(ResetRaises):
    """reset without **kwargs: only the fields it names are passed."""

    def reset(self, answer, id):
        self.seen = (answer, id)
        return f"answer {answer}"


def not_a_class():
    return None
