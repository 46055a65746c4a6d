"""Batch collators: dynamic padding (pad to the longest row in the batch) and packed rows."""

from __future__ import annotations

import torch

from . import IGNORE_INDEX


class PadCollator:
    """Right-pads to the longest row of the batch (never to max_length), with an attention mask.

    Packed rows (with `position_ids`) get no attention mask: transformers reads sample boundaries
    from the restarting position ids; padding becomes its own segment and carries no loss.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad = pad_token_id
        self.mult = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        if self.mult:
            n = -(-n // self.mult) * self.mult
        packed = "position_ids" in rows[0]
        ids = torch.full((len(rows), n), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)
        out = {"input_ids": ids, "labels": labels}
        if packed:
            pos = torch.zeros((len(rows), n), dtype=torch.long)
            out["position_ids"] = pos
        else:
            mask = torch.zeros((len(rows), n), dtype=torch.long)
            out["attention_mask"] = mask
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            if packed:
                pos[i, :k] = torch.tensor(r["position_ids"])
                pos[i, k:] = torch.arange(n - k)
            else:
                mask[i, :k] = 1
        return out


class ClassifyCollator:
    """Right-pads input_ids (attention mask) and labels; scalar labels stay one per row."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            mask[i, :k] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if "labels" in rows[0]:
            if isinstance(rows[0]["labels"], list):
                lab = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)
                for i, r in enumerate(rows):
                    lab[i, :len(r["labels"])] = torch.tensor(r["labels"])
            else:
                lab = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
            out["labels"] = lab
        return out
