"""One rich console for all user-facing output (stderr, so stdout stays clean for data)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


def log(msg: str) -> None:
    console.print(msg, markup=False)


def warn(msg: str) -> None:
    console.print(f"[bold yellow]warning:[/] {msg}")
