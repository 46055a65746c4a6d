"""The tensors that travel: a model's trainable parameters, in a fixed order, as numpy arrays.

Only these leave a client (the adapter, or every weight for adapter.method full); their names and
shapes (the layout) are sent once so the server can save and check them, and every round carries
a digest of the layout, so a client built from a different config is refused by name.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def trainable(model) -> list[tuple[str, object]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def lora_pairs(model, names: list[str]) -> list[list[int]]:
    """[index of A, index of B] for every plain LoRA linear layer (peft `lora.Linear`); the fused-expert
    ParamWrapper and other tuners are averaged tensor by tensor."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    index = {n: i for i, n in enumerate(names)}
    by_id = {id(p): n for n, p in model.named_parameters()}
    pairs = []
    for module in model.modules():
        if type(module) is not LoraLinear:
            continue
        for adapter, a in module.lora_A.items():
            b = module.lora_B[adapter]
            na, nb = by_id.get(id(a.weight)), by_id.get(id(b.weight))
            if na in index and nb in index:
                pairs.append([index[na], index[nb]])
    return pairs


def layout(model) -> dict:
    items = trainable(model)
    names = [n for n, _ in items]
    return {"names": names, "shapes": [list(p.shape) for _, p in items], "pairs": lora_pairs(model, names)}


def digest(lay: dict) -> str:
    return hashlib.sha256(json.dumps([lay["names"], lay["shapes"]]).encode()).hexdigest()[:16]


def get_arrays(model) -> list[np.ndarray]:
    return [p.detach().to("cpu").float().numpy().copy() for _, p in trainable(model)]


def set_arrays(model, arrays: list[np.ndarray]) -> None:
    """Copy the global tensors into the trainable parameters (same order), checking every shape."""
    import torch

    items = trainable(model)
    if len(items) != len(arrays):
        raise ValueError(f"the server sent {len(arrays)} tensors, this client trains {len(items)}: the sites run "
                         "different configs (adapter, model or labels)")
    with torch.no_grad():
        for (name, p), a in zip(items, arrays):
            if tuple(p.shape) != tuple(a.shape):
                raise ValueError(f"{name}: the server sent shape {tuple(a.shape)}, this client has {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(p.dtype))


def nbytes(arrays) -> int:
    return int(sum(a.nbytes for a in arrays))
