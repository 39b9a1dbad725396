"""The `rg:<name>` tasks: any reasoning-gym dataset behind rlvr's Task contract.

reasoning-gym datasets are virtual: entry `i` is generated on demand from the dataset seed and
`i`. The adapter draws candidate indices from the seeded stream and keeps those whose question
hashes into the wanted split, so the split follows the question text, not the seed. Scoring is
the dataset's own `score_answer`, given the answer read in the task's answer format (rlvr.tasks.answers).

The default format is `answer-tag`: the answer inside the last <answer></answer> tags, and, only
under "auto", the last non-empty line of a reply that has no tags at all (an explicitly chosen
`answer-tag` requires the tags). `prompt` is the format's instruction, a blank line, then the
question; `question` (for chat models) is the question, a blank line, then the instruction.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from random import Random
from types import ModuleType

from rlvr.tasks.answers import last_line, tagged_answer
from rlvr.registry import UnknownNameError
from rlvr.tasks.base import Task, draw_in_split

# word_ladder refuses sizes above 20000; 10000 indices per seed is plenty for a training run.
DEFAULT_SIZE = 10_000

# Original entries kept in memory for scoring; see ReasoningGymTask._original_entry.
ENTRY_CACHE_SIZE = 4096


def import_reasoning_gym() -> ModuleType:
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError(
            "rg:<name> tasks need the reasoning-gym package; "
            'install it with pip install -e ".[all]"'
        ) from error
    return reasoning_gym


def list_reasoning_gym() -> list[str]:
    """Names of reasoning-gym's registered datasets; [] if reasoning-gym is not installed."""
    try:
        import_reasoning_gym()
    except ImportError:
        return []
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(Task):
    """One reasoning-gym dataset (default settings) as a task named `rg:<dataset>`."""

    default_answer_format = "answer-tag"

    def __init__(
        self, dataset: str, seed: int = 0, size: int = DEFAULT_SIZE, answer_format: str = "auto"
    ) -> None:
        self.use_answer_format(answer_format)
        reasoning_gym = import_reasoning_gym()
        known = list_reasoning_gym()
        if dataset not in known:
            shown = ", ".join(known[:20])
            raise UnknownNameError(
                f"unknown reasoning-gym dataset {dataset!r}; known ({len(known)}): {shown}, ... "
                "(`rlvr tasks` lists them all)"
            )
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.dataset_name = dataset
        self.name = f"rg:{dataset}"
        self.description = f"reasoning-gym dataset {dataset!r}"
        self.seed = seed
        self.size = size
        try:
            self.dataset = reasoning_gym.create_dataset(dataset, seed=seed, size=size)
        except (AssertionError, ValueError, TypeError) as error:
            raise ValueError(
                f"reasoning-gym dataset {dataset!r} cannot be built with its default settings "
                f"({error}); pick another dataset"
            ) from error
        self._entries: OrderedDict[str, dict] = OrderedDict()

    def item(self, split: str, index: int) -> dict:
        dataset_index, entry = draw_in_split(
            self.seed, split, index, self._draw, lambda drawn: drawn[1]["question"], self.name
        )
        self._remember(entry)
        answer = entry["answer"]
        instruction = self.answer_format.instruction
        return {
            "id": f"{self.name}/{split}/{index}",
            "prompt": f"{instruction}\n\n{entry['question']}",
            "question": f"{entry['question']}\n\n{instruction}",
            # Some datasets (graph_color, rubiks_cube, ...) have no single oracle answer and
            # verify in score_answer instead; their answer is None.
            "answer": "" if answer is None else str(answer),
            "level": 0,
            "key": entry["question"],
            # default=str keeps the item JSON-serialisable whatever a dataset puts in metadata.
            "entry": json.loads(json.dumps(entry, default=str)),
            "source": {
                "dataset": self.dataset_name,
                "seed": self.seed,
                "size": self.size,
                "index": dataset_index,
            },
        }

    def _draw(self, rng: Random) -> tuple[int, dict]:
        dataset_index = rng.randrange(self.size)
        return dataset_index, self.dataset[dataset_index]

    def extract_answer(self, completion: str) -> str | None:
        if self.answer_format_is_default and tagged_answer(completion) is None:
            return last_line(completion)
        return self.answer_format.extract(completion)

    def score(self, completion: str, item: dict) -> float:
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        try:
            entry = self._original_entry(item)
            reward = float(self.dataset.score_answer(answer=answer, entry=entry))
        except Exception:
            # Some verifiers parse the answer and raise on malformed text (prime_factorization
            # calls int() on it); a malformed answer is a wrong answer, not a verifier failure.
            return 0.0
        return min(max(reward, 0.0), 1.0)

    def _remember(self, entry: dict) -> None:
        self._entries[entry["question"]] = entry
        self._entries.move_to_end(entry["question"])
        while len(self._entries) > ENTRY_CACHE_SIZE:
            self._entries.popitem(last=False)

    def _original_entry(self, item: dict) -> dict:
        """The entry as reasoning-gym built it, for score_answer.

        The JSON copy in item["entry"] turns tuples into lists, which breaks some verifiers
        (arc_agi, rearc), so the original is preferred: from memory, else regenerated from
        its index when the item came from this dataset and seed (another process's items).
        """
        question = item["key"]
        if question in self._entries:
            return self._entries[question]
        source = item.get("source") or {}
        same_dataset = (source.get("dataset"), source.get("seed"), source.get("size")) == (
            self.dataset_name,
            self.seed,
            self.size,
        )
        if same_dataset and isinstance(source.get("index"), int):
            entry = self.dataset[source["index"]]
            if entry["question"] == question:
                self._remember(entry)
                return entry
        return item["entry"]
