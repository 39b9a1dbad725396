"""An environment class written for TRL's `GRPOTrainer(environment_factory=AbacusEnv)`, used
unchanged by rlvr as `--env envs_trl_example:AbacusEnv` (docs/episodes.md shows this file)."""


class AbacusEnv:
    """Integer arithmetic on an abacus: add and multiply, then submit the answer."""

    # Example conversations rlvr shows before the question (--env-examples N). A list, not a
    # method, so TRL does not take it for a tool.
    examples = [
        {
            "question": "What is 12 × 34? Answer with just the number.",
            "calls": [
                {"tool": "multiply", "arguments": {"a": 12, "b": 34}, "result": "408"},
                {"tool": "submit", "arguments": {"answer": 408}, "result": "submitted"},
            ],
            "answer": "408",
        },
        {
            "question": "What is 457 + 286? Answer with just the number.",
            "calls": [
                {"tool": "add", "arguments": {"a": 457, "b": 286}, "result": "743"},
                {"tool": "submit", "arguments": {"answer": 743}, "result": "submitted"},
            ],
            "answer": "743",
        },
    ]

    def reset(self, **kwargs) -> str | None:
        """Called at the start of each episode with the dataset row's fields."""
        self.answer = int(kwargs["answer"])
        self.submitted = None
        self.done = False
        return "Use the abacus, then submit your answer."

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first number.
            b: The second number.

        Returns:
            The sum a + b.
        """
        return a + b

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.

        Returns:
            The product a * b.
        """
        return a * b

    def submit(self, answer: int) -> str:
        """Submit your final answer; this ends the episode.

        Args:
            answer: The answer to the question.

        Returns:
            A confirmation.
        """
        self.submitted = answer
        self.done = True
        return "submitted"

    def get_reward(self) -> float:
        return 1.0 if self.submitted == self.answer else 0.0
