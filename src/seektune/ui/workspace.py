"""The workspace: the one folder the UI reads and writes.

Every path a person types or picks in the UI is resolved here, symlinks included, and refused when it
lands outside the workspace, so `../../etc/passwd` in a path box names the box and the folder instead
of reading the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".gz")
UI_DIR = ".seektune-ui"  # the UI's own scratch files (uploads staging, plots), inside the workspace
SKIP_DIRS = {UI_DIR, ".git", ".venv", "node_modules", "__pycache__"}


class WorkspaceError(ValueError):
    """A path outside the workspace, or one that does not exist where it must."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | Path) -> "Workspace":
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise WorkspaceError(f"--workspace {root}: not a folder")
        (root / UI_DIR).mkdir(exist_ok=True)
        return cls(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def scratch(self) -> Path:
        return self.root / UI_DIR

    def path(self, user_path: str | Path, what: str = "path", must_exist: bool = False) -> Path:
        """`user_path` (relative to the workspace, or absolute inside it) as a resolved path inside it."""
        text = str(user_path).strip()
        if not text:
            raise WorkspaceError(f"{what}: empty path")
        p = Path(text).expanduser()
        resolved = (p if p.is_absolute() else self.root / p).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise WorkspaceError(f"{what}: '{text}' is outside the workspace {self.root}")
        if must_exist and not resolved.exists():
            raise WorkspaceError(f"{what}: '{text}' does not exist in the workspace {self.root}")
        return resolved

    def rel(self, p: str | Path) -> str:
        """A workspace path as the UI shows it (relative, forward slashes)."""
        p = Path(p).resolve()
        return p.relative_to(self.root).as_posix() if p != self.root else "."

    def data_files(self, limit: int = 500) -> list[str]:
        """Data files in the workspace; hidden folders, virtualenvs and run folders are not walked."""
        out: list[str] = []
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                             and not (here == self.root and d == "runs"))
            for name in sorted(files):
                if name.endswith(DATA_SUFFIXES) and not name.startswith("."):
                    out.append(self.rel(here / name))
                    if len(out) >= limit:
                        return out
        return out
