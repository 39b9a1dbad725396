"""OpenEnv environments for the tests of rlvr.envs, built in-process (no container, no network).
Importing this module needs openenv-core (`pip install -e ".[openenv]"`)."""
from __future__ import annotations

from typing import Any, Optional

from fastmcp import FastMCP
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.mcp_environment import MCPEnvironment
from openenv.core.env_server.types import Action, Observation, State


class Scratchpad(MCPEnvironment):
    """Two tools on a FastMCP server: write a note, read it back; `finish` ends with a reward."""

    examples = [{"question": "Remember 7, then read it.",
                 "calls": [{"tool": "write", "arguments": {"note": "7"}, "result": "ok"},
                           {"tool": "read", "arguments": {}, "result": "7"}],
                 "answer": "7"}]

    def __init__(self):
        mcp = FastMCP("scratchpad")
        self.note = ""

        @mcp.tool
        def write(note: str) -> str:
            """Write a note.

            Args:
                note: The text to keep.
            """
            self.note = note
            return "ok"

        @mcp.tool
        def read() -> str:
            """Read the note back."""
            return self.note

        @mcp.tool
        def fail(reason: str) -> str:
            """Always fails.

            Args:
                reason: Why.
            """
            raise ValueError(f"failed on purpose: {reason}")

        super().__init__(mcp)
        self._state = State(episode_id="", step_count=0)

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None, **kwargs: Any) -> Observation:
        self.note = ""
        self.answer = kwargs.get("answer")
        self._state = State(episode_id=episode_id or "", step_count=0)
        return Observation(done=False, reward=0.0, metadata={"status": "ready"})

    def step(self, action: Action, timeout_s: Optional[float] = None, **kwargs: Any) -> Observation:
        observation = super().step(action, timeout_s=timeout_s, **kwargs)
        if getattr(action, "tool_name", None) == "read" and self.note == self.answer:
            observation.done, observation.reward = True, 1.0
        return observation

    def _step_impl(self, action: Action, timeout_s: Optional[float] = None, **kwargs: Any) -> Observation:
        return Observation(done=False, reward=0.0, metadata={"error": "use the tools"})

    @property
    def state(self) -> State:
        return self._state


class CountAction(Action):
    message: str


class CountObservation(Observation):
    text: str


class CountToThree(Environment):
    """Text actions: say the next number; 1.0 per right number, done at three."""

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None, **kwargs: Any) -> CountObservation:
        self.count = 0
        self.episode_id = episode_id
        return CountObservation(text="Count to three, one number per turn.", reward=0.0)

    def step(self, action: CountAction, timeout_s: Optional[float] = None, **kwargs: Any) -> CountObservation:
        right = action.message == str(self.count + 1)
        self.count += right
        return CountObservation(text="right" if right else "wrong", done=self.count == 3, reward=1.0 if right else 0.0)

    @property
    def state(self) -> State:
        return State(episode_id=self.episode_id, step_count=self.count)


class MoveAction(Action):
    row: int
    column: int


class Board(Environment[MoveAction, Observation, State]):
    """An action with two fields: read from a JSON object; the generic base names the action."""

    def reset(self, seed=None, episode_id=None, **kwargs) -> Observation:
        self.moves = []
        return Observation()

    def step(self, action, timeout_s=None, **kwargs) -> Observation:
        self.moves.append((action.row, action.column))
        return Observation(done=len(self.moves) == 2, reward=0.5, metadata={"moves": len(self.moves)})

    @property
    def state(self) -> State:
        return State()


class Unannotated(Environment):
    def reset(self, seed=None, episode_id=None, **kwargs):
        return Observation()

    def step(self, action, timeout_s=None, **kwargs):
        return Observation()

    @property
    def state(self):
        return State()
