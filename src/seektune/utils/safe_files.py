"""Refuse pickles that would run code, before anything loads a folder.

Unpickling can call any importable function, so a `pytorch_model.bin`, `optimizer.pt` or
`rng_state.pth` planted in a run or model folder could run code on the machine that loads it.
seektune writes none (safetensors and JSON only) and its loaders prefer safetensors, but HF and peft
still fall back to torch files when no safetensors file is there. So every folder seektune is about
to load from (a checkpoint to resume, final/, an adapter, a model folder) is checked first: each
file that is a pickle (by content, whatever its name) must load under torch's weights-only
unpickler, which allows tensors and plain containers and never calls anything else; a file that
does not is refused with UnsafeFileError naming the file and what it would have called.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

NEVER_LOADED = {"training_args.bin"}  # HF's pickled TrainingArguments: written by HF, read by nobody
SKIP_DIRS = ("global_step",)           # DeepSpeed's own checkpoint shards (see docs/reliability.md)
NOT_UNPICKLED = (".safetensors", ".gguf")  # large, and their loaders parse them without pickle


class UnsafeFileError(ValueError):
    """A file that would execute code when loaded; the message names it."""


def is_pickle(path: Path) -> bool:
    """A raw pickle (protocol 2+) or a torch zip archive (which holds one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if head[:1] == b"\x80":
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _numpy_globals() -> list:
    """What HF's own rng_state.pth needs beyond tensors (transformers allows the same when loading it)."""
    import numpy as np

    out = [np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or getattr(np, "core")
    out.append(core.multiarray._reconstruct)
    out += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32")]
    return out


def unsafe_reason(path: Path) -> str | None:
    """Why loading `path` would run code (None: it is not a pickle, or only holds weights)."""
    if not is_pickle(path):
        return None
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        lines = [x.strip() for x in str(e).splitlines() if "GLOBAL" in x or "Unsupported" in x]
        return lines[0] if lines else str(e).splitlines()[0]
    except Exception:  # damaged but harmless: the real loader reports it
        return None
    return None


def check_folder(folder: str | Path, what: str = "folder") -> None:
    """UnsafeFileError when any file in `folder` (or below) is a pickle that would run code."""
    root = Path(folder)
    if not root.is_dir():
        if root.is_file():
            reason = unsafe_reason(root)
            if reason:
                raise UnsafeFileError(_message(root, reason, what))
        return
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if not p.is_file() or p.name in NEVER_LOADED or p.name.endswith(NOT_UNPICKLED) \
                or any(part.startswith(SKIP_DIRS) for part in rel[:-1]):
            continue
        reason = unsafe_reason(p)
        if reason:
            raise UnsafeFileError(_message(p, reason, what))


def _message(p: Path, reason: str, what: str) -> str:
    return (f"{p}: refusing to load this {what}: the file is a pickle that would run code when loaded "
            f"({reason}). seektune loads weights only from safetensors, JSON and weights-only torch files; "
            "delete the file if you did not put it there, or re-save the weights as safetensors.")
