"""A records-per-second progress bar (rich) shared by the data tools; silent when disabled."""

from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..utils.console import console


@contextlib.contextmanager
def record_progress(label: str, enabled: bool = True, total: int | None = None):
    """Yield `advance(n=1)`; shows count, rate and elapsed time on stderr."""
    if not enabled:
        yield lambda n=1: None
        return
    cols = [SpinnerColumn(), TextColumn(f"{label}")]
    cols += [BarColumn(), MofNCompleteColumn()] if total else [TextColumn("{task.completed:,.0f} records")]
    cols += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]  # rich's speed is None at first
    with Progress(*cols, console=console, transient=True) as p:
        task = p.add_task(label, total=total, rate="")
        state = {"n": 0}

        def advance(n: int = 1):
            state["n"] += n
            if state["n"] % 256 == 0 or n > 1:
                t = p.tasks[0]
                rate = f"{t.speed:,.0f}/s" if t.speed else ""
                p.update(task, advance=0, rate=rate)
            p.advance(task, n)

        yield advance
