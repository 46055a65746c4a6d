"""The one checkpoint client: staged writes, a completion marker, "newest complete", rotation.

A checkpoint is written into `checkpoints/.staging/`, gets `seektune_complete.json` last (its step,
and how many lines metrics.jsonl held then: a resume keeps exactly those), and is then renamed into
place, so a `checkpoint-N` folder exists only whole: a run killed mid-save leaves no "latest"
checkpoint that fails to load. The staged files are fsynced before the marker, rotation deletes a
marker before its folder, and a write that fails (a full disk) is a CheckpointError that removes the
staged copy and leaves every earlier checkpoint as it was. HF-Trainer-based stages (trl's included, which
override `_save_checkpoint`) reach it through `SeekTrainerMixin`; stages with their own loop (ppo)
call `save` with a writer function. Nothing pickled is kept: tensors go to safetensors, state to JSON
(engine/state_files.py); HF's transient training_args.bin is deleted before the marker.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

PREFIX = "checkpoint"
COMPLETE = "seektune_complete.json"
STAGING = ".staging"


class CheckpointError(OSError):
    """A checkpoint or final/ could not be written (full disk, quota, permissions); names the folder."""


def write_errors() -> tuple:
    """What a failed write raises: OSError, and safetensors' own error (it wraps ENOSPC in a message)."""
    from safetensors import SafetensorError

    return OSError, SafetensorError


def as_os_error(e: Exception) -> OSError:
    """An OSError with the errno of `e` (safetensors reports 'No space left on device (os error 28)')."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    return OSError(int(m.group(1)) if m else errno.EIO, str(e))


def step_of(path: str | Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1])


def fsync_tree(folder: Path) -> None:
    """Flush every file (and the folder) to disk, so the marker never lands before the data it vouches for."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


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
        fsync_tree(src)
        with open(src / COMPLETE, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        if dst.exists():
            _remove(dst)
        os.rename(src, dst)
        _fsync_dir(self.folder)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.rotate(best)
        return dst

    def failed(self, step: int, err: Exception) -> CheckpointError:
        """Clean up after a write that failed; the error to raise, naming what is still there."""
        err = as_os_error(err)
        shutil.rmtree(self.staging, ignore_errors=True)  # frees what the failed copy took
        done = self.complete()
        kept = f"the previous checkpoint {done[-1][1]} is kept" if done else "there is no earlier checkpoint"
        why = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        return CheckpointError(err.errno, f"could not write {self.folder / f'{PREFIX}-{step}'}: {why}; {kept}. "
                                          "Free space, then continue with `seektune train CONFIG --resume`.")

    def save(self, step: int, write: Callable[[Path], None]) -> Path | None:
        """Stage, write (the caller's function fills the folder), commit. Only the main process writes."""
        if not self.is_main:
            return None
        try:
            self.begin()
            target = self.staging / f"{PREFIX}-{step}"
            target.mkdir()
            write(target)
            return self.commit(step, target)
        except write_errors() as e:
            if isinstance(e, CheckpointError):
                raise
            raise self.failed(step, e) from None

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
                _remove(p)


def _remove(folder: Path) -> None:
    """Delete a checkpoint marker first: a deletion cut short leaves an incomplete folder, never a
    "complete" one with files missing."""
    (folder / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(folder: str | Path, log_warning=None) -> str | None:
    """The newest complete checkpoint under `folder` (None when there is none)."""
    return CheckpointClient(folder).latest(log_warning)
