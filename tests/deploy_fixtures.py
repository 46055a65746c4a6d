"""Shared helpers for the deployment tests: a LoRA run folder on a tiny model without training."""

from __future__ import annotations

from pathlib import Path

import torch


def make_lora_run(run_dir: Path, preset: str = "tiny-qwen2", seed: int = 0) -> Path:
    """A run folder (config.yaml + final/ adapter + tokenizer) whose LoRA B weights are random.

    Random B makes the adapter change the logits a lot, so a merge that loses a target fails loudly.
    """

    from seektune.config import Config
    from seektune.models.adapters import apply_adapter
    from seektune.models.loader import load_model

    cfg = Config.model_validate({"model": {"name_or_path": preset}, "adapter": {"method": "lora", "r": 4},
                                 "train": {"output_dir": str(run_dir)}})
    model, tok, _ = load_model(cfg.model, log=lambda *_: None)
    torch.manual_seed(10_007 + seed)  # LoRA A draws from the global generator: the same run whatever ran before
    # (a seed other than the base model's 0, or A would repeat the first weights of the model)
    model, _ = apply_adapter(model, cfg.adapter, "causal_lm")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    model.save_pretrained(str(run_dir / "final"))
    tok.save_pretrained(str(run_dir / "final"))
    (run_dir / "final" / "seektune_complete.json").write_text('{"final": true}')  # as RunFolder.save_final does
    return run_dir


import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared CPU two OpenMP threads
    made decode steps several times slower; restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
