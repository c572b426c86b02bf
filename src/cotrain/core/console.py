"""What a person sees in the terminal: a rich progress bar when interactive, JSON lines when not
(the server captures those into the run's log)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ConsoleReporter:
    def __init__(self, interactive: bool | None = None):
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._console = Console(stderr=False)

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.interactive:
            print(json.dumps(event, separators=(",", ":")), flush=True)
            return
        kind = event["type"]
        if kind == "started":
            self._start(event)
        elif kind == "progress" and self._progress is not None and self._task is not None:
            m = event["metrics"]
            self._progress.update(
                self._task,
                completed=event["step"],
                loss=f"{event['loss']:.4f}",
                tps=f"{m['tokens_per_second']:,.0f}",
            )
        elif kind == "eval":
            self._console.print(
                f"[cyan]eval[/] step {event['step']}: val loss {event['val_loss']:.4f}, "
                f"perplexity {event['val_perplexity']:.2f}, accuracy {event['val_accuracy']:.3f}"
            )
        elif kind == "checkpoint":
            self._console.print(f"[green]checkpoint[/] step {event['step']} → {event['path']}")
        elif kind in ("completed", "failed"):
            self.close()
            if kind == "completed":
                self._console.print(f"[bold green]completed[/]: final model in {event['final_model_path']}")
            else:
                self._console.print(f"[bold red]stopped[/] at step {event.get('step')}: {event.get('error')}")

    def _start(self, event: dict[str, Any]) -> None:
        self.close()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._task = self._progress.add_task(
            event["session_id"], total=event["total_steps"], completed=event["step"], loss="-", tps="-"
        )
        self._progress.start()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
