"""What every page shares: the workspace and the loaded chat models."""

from __future__ import annotations

from dataclasses import dataclass, field

from .chat import ModelCache
from .workspace import Workspace


@dataclass
class UIContext:
    ws: Workspace
    models: ModelCache = field(default_factory=ModelCache)

