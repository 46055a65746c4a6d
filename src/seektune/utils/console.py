"""One rich console for all user-facing output (stderr, so stdout stays clean for data)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _main() -> bool:
    from .dist import is_main

    return is_main()


def log(msg: str) -> None:
    if _main():  # in distributed runs only rank 0 talks
        console.print(msg, markup=False)


def warn(msg: str) -> None:
    if _main():
        console.print(f"[bold yellow]warning:[/] {msg}")
