"""The one checkpoint client: staged writes, a completion marker, "newest complete", rotation.

A checkpoint is written into `checkpoints/.staging/`, gets `seektune_complete.json` last (its step,
and how many lines metrics.jsonl held then: a resume keeps exactly those), and is then renamed into
place, so a `checkpoint-N` folder exists only whole: a run killed mid-save leaves no "latest"
checkpoint that fails to load. HF-Trainer-based stages (trl's included, which
override `_save_checkpoint`) reach it through `SeekTrainerMixin`; stages with their own loop (ppo)
call `save` with a writer function. Nothing pickled is written by seektune itself: tensors go to
safetensors, state to JSON (HF's own optimizer/RNG files are loaded by it with weights_only=True).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

PREFIX = "checkpoint"
COMPLETE = "seektune_complete.json"
STAGING = ".staging"


def step_of(path: str | Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1])


class CheckpointClient:
    def __init__(self, folder: str | Path, keep: int = 2, is_main: bool = True):
        self.folder = Path(folder)
        self.keep = keep
        self.is_main = is_main

    @property
    def staging(self) -> Path:
        return self.folder / STAGING

    def begin(self) -> Path:
        """A fresh, empty staging folder to write the next checkpoint into."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging

    def commit(self, step: int, src: Path | None = None, best: str | None = None) -> Path:
        """Mark `src` (default: staging/checkpoint-step) complete and rename it into place; rotate."""
        src = Path(src or self.staging / f"{PREFIX}-{step}")
        dst = self.folder / f"{PREFIX}-{step}"
        for junk in ("training_args.bin",):  # a full pickle of TrainingArguments, never read on resume
            (src / junk).unlink(missing_ok=True)
        marker = {"step": step}
        metrics = self.folder.parent / "metrics.jsonl"  # checkpoints/ sits in the run folder
        if metrics.exists():
            # what metrics.jsonl held when this checkpoint was taken: a resume keeps exactly these lines
            marker["metrics_lines"] = metrics.read_bytes().count(b"\n")
        with open(src / COMPLETE, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        if dst.exists():
            shutil.rmtree(dst)
        os.rename(src, dst)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.rotate(best)
        return dst

    def save(self, step: int, write: Callable[[Path], None]) -> Path | None:
        """Stage, write (the caller's function fills the folder), commit. Only the main process writes."""
        if not self.is_main:
            return None
        self.begin()
        target = self.staging / f"{PREFIX}-{step}"
        target.mkdir()
        write(target)
        return self.commit(step, target)

    def complete(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.folder.glob(f"{PREFIX}-*"):
            try:
                step = step_of(p)
            except ValueError:
                continue
            if (p / COMPLETE).exists():
                out.append((step, p))
        return sorted(out)

    def latest(self, log_warning=None) -> str | None:
        """The newest completely written checkpoint; half-written ones are skipped with a warning."""
        if not self.folder.exists():
            return None
        for p in self.folder.glob(f"{PREFIX}-*"):
            if not (p / COMPLETE).exists() and log_warning:
                log_warning(f"ignoring incomplete checkpoint {p} (no {COMPLETE}: it was being written when the "
                            "run stopped)")
        done = self.complete()
        return str(done[-1][1]) if done else None

    def rotate(self, best: str | None = None) -> None:
        """Keep the newest `keep` complete checkpoints, plus the best one."""
        done = self.complete()
        keep = {p for _, p in done[-self.keep:]}
        if best:
            keep.add(Path(best))
        for _, p in done:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(folder: str | Path, log_warning=None) -> str | None:
    """The newest complete checkpoint under `folder` (None when there is none)."""
    return CheckpointClient(folder).latest(log_warning)
