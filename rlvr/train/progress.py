"""The progress bar of `rlvr train`: step, reward, entropy, the last evaluation's headline, ETA."""
from __future__ import annotations

import sys

from rlvr.config import TrainConfig
from rlvr.eval.runner import HEADLINE


class Progress:
    """A rich progress bar: step, reward, entropy, last hm@4, ETA. Silent when disabled; `mute`
    (ranks other than 0) silences its warnings too."""

    def __init__(self, cfg: TrainConfig, enabled: bool, console=None, mute: bool = False) -> None:
        self.enabled = enabled and not mute
        self.mute = mute
        self.total = cfg.steps
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]K={cfg.k}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
        )

    def start(self, completed: int) -> None:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=completed, stats="")

    def update(self, step: int, row: dict, last_eval: dict) -> None:
        if not self.enabled:
            return
        stats = f"reward {row['reward/mean']:.3f}  entropy {row['entropy/mean']:.3f}"
        if f"eval/{HEADLINE}" in last_eval:
            stats += f"  {HEADLINE} {last_eval[f'eval/{HEADLINE}']:.3f}"
        self.progress.update(self.task, completed=step, stats=stats)

    def stop(self) -> None:
        if self.enabled:
            self.progress.stop()

    def warn(self, message: str) -> None:
        """A visible warning, above the bar when there is one."""
        if self.mute:
            return
        if self.enabled:
            self.progress.console.print(f"[bold yellow]{message}[/]")
        else:
            print(message, file=sys.stderr)
