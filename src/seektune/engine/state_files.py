"""Optimizer, scheduler, grad-scaler and RNG state as safetensors + JSON instead of torch pickles.

HF Trainer writes optimizer.pt / scheduler.pt / scaler.pt / rng_state.pth with torch.save (pickle);
SeekTrainerMixin writes these files instead, and PPO's own loop uses the same helpers, so a seektune
checkpoint holds no pickle and resuming never unpickles anything. Tensors go to safetensors, every
other value (step counts, betas, scheduler counters, Python's RNG state) to JSON.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
SCHEDULER = "scheduler.json"
SCALER = "scaler.json"


def rng_names(rank: int | None = None) -> tuple[str, str]:
    """(tensor file, JSON file) of one process's RNG state."""
    suffix = "" if rank is None else f"_{rank}"
    return f"rng_state{suffix}.safetensors", f"rng_state{suffix}.json"


def _jsonable(obj):
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if torch.is_tensor(obj):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in JSON")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_jsonable(obj)), encoding="utf-8")


# -- optimizer ----------------------------------------------------------------------------------
def optimizer_tensors(opt) -> tuple[dict, dict]:
    """The optimizer's state dict as flat tensors + JSON: per-parameter tensors by `pid.key`, 0-dim
    values (AdamW's step) and the group settings in the JSON part."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
                         "steps": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"{pid}.{k}"] = v.detach().contiguous()
            else:
                meta["steps"][f"{pid}.{k}"] = float(v)
    return tensors, _jsonable(meta)


def load_optimizer_tensors(opt, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["steps"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = torch.tensor(v, dtype=torch.float32)
    for g, saved in zip(sd["param_groups"], meta["param_groups"]):
        g.update({k: tuple(v) if k == "betas" else v for k, v in saved.items() if k != "params"})
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def save_optimizer(opt, folder: Path) -> None:
    from safetensors.torch import save_file

    tensors, meta = optimizer_tensors(opt)
    save_file(tensors, str(folder / OPTIMIZER))
    _write_json(folder / OPTIMIZER_META, meta)


def load_optimizer(opt, folder: Path, device="cpu") -> None:
    from safetensors.torch import load_file

    meta = json.loads((folder / OPTIMIZER_META).read_text(encoding="utf-8"))
    load_optimizer_tensors(opt, load_file(str(folder / OPTIMIZER), device=str(device)), meta)


# -- scheduler and grad scaler: their state dicts are numbers only --------------------------------
def save_plain_state(obj, path: Path) -> None:
    _write_json(path, obj.state_dict())


def load_plain_state(obj, path: Path) -> None:
    obj.load_state_dict(json.loads(path.read_text(encoding="utf-8")))


# -- RNG ----------------------------------------------------------------------------------------
def save_rng(folder: Path, rank: int | None = None) -> None:
    """Python, NumPy, torch CPU and CUDA generator states (what HF's rng_state.pth holds)."""
    from safetensors.torch import save_file

    tensor_name, json_name = rng_names(rank)
    version, py_state, gauss = random.getstate()
    kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"cpu": torch.random.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.random.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    save_file(tensors, str(folder / tensor_name))
    _write_json(folder / json_name, {"python": [version, list(py_state), gauss],
                                     "numpy": [kind, int(np_pos), int(np_has_gauss), float(np_gauss)]})


def load_rng(folder: Path, rank: int | None = None) -> bool:
    """Restore what save_rng wrote; False when this checkpoint has no such files."""
    from safetensors.torch import load_file

    tensor_name, json_name = rng_names(rank)
    if not (folder / tensor_name).exists():
        return False
    t = load_file(str(folder / tensor_name))
    meta = json.loads((folder / json_name).read_text(encoding="utf-8"))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, pos, has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((kind, t["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.random.set_rng_state(t["cpu"])
    cuda = [t[k] for k in sorted((k for k in t if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            torch.cuda.random.set_rng_state(cuda[0])
    return True
