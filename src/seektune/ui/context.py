"""What every page shares: the workspace and the loaded chat models."""

from __future__ import annotations

from dataclasses import dataclass, field

from .chat import ModelCache
from .workspace import Workspace


@dataclass
class UIContext:
    ws: Workspace
    models: ModelCache = field(default_factory=ModelCache)


def problem_md(lines: list[str] | str) -> str:
    """Problems as the pages show them: one bullet per problem, each naming its key or file."""
    lines = [lines] if isinstance(lines, str) else lines
    return "**problems:**\n\n" + "\n".join(
        f"- `{ln.split(':', 1)[0]}`:{ln.split(':', 1)[1]}" if ":" in ln else f"- {ln}" for ln in lines)
