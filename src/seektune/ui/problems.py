"""Problems as every page shows them, in a module of its own so jobs.py can use it without loading models."""

from __future__ import annotations


def problem_md(lines: list[str] | str) -> str:
    """Problems as the pages show them: one bullet per problem, each naming its key or file."""
    lines = [lines] if isinstance(lines, str) else lines
    return "**problems:**\n\n" + "\n".join(
        f"- `{ln.split(':', 1)[0]}`:{ln.split(':', 1)[1]}" if ":" in ln else f"- {ln}" for ln in lines)
