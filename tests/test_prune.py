"""Head pruning: the least important heads go, the smaller model loads with plain transformers and generates."""

from __future__ import annotations

import json
import os

import pytest
import torch

from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.export.prune import apply_pruning, head_importance, plan_pruning
from seektune.export.source import ExportError, load_causal_lm, resolve_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = ["The patient reports a mild headache and fatigue since Monday.",
         "Translate to French: the meeting moved to Tuesday.",
         "List three prime numbers greater than ten.",
         "Water boils at one hundred degrees Celsius at sea level."]


@pytest.fixture(scope="module")
def base():
    return load_causal_lm(resolve_source("tiny-qwen2"))


def _dead_heads(model):
    """Silence query head 1 (KV group 0) and head 2 (group 1) of every layer: their o_proj columns are 0."""
    d = model.config.head_dim if getattr(model.config, "head_dim", None) else \
        model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer in model.model.layers:
            for h in (1, 2):
                layer.self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
    return d


@torch.no_grad()
def _logits(model, tok, text):
    return model(**tok(text, return_tensors="pt")).logits


def test_silent_heads_score_zero_and_pruning_them_keeps_logits(base, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM

    model, tok = copy.deepcopy(base[0]), base[1]
    _dead_heads(model)
    scores = head_importance(model, tok, TEXTS)
    assert scores.shape == (2, 4)
    assert torch.all(scores[:, [1, 2]] == 0) and torch.all(scores[:, [0, 3]] > 0)
    plan = plan_pruning(model, scores, 0.3)  # 2 query heads per KV group: 0.3 rounds to one per group
    assert plan.keep == [[0, 3], [0, 3]] and plan.heads_after == 2 and plan.kv_after == 2
    before = _logits(model, tok, TEXTS[0])
    n_before = sum(p.numel() for p in model.parameters())
    apply_pruning(model, plan)
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert torch.allclose(before, _logits(model, tok, TEXTS[0]), atol=1e-5)
    model.save_pretrained(str(tmp_path / "pruned"))
    tok.save_pretrained(str(tmp_path / "pruned"))
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "pruned")).eval()
    assert plain.config.num_attention_heads == 2 and plain.model.layers[0].self_attn.q_proj.out_features == 2 * 16
    assert torch.allclose(before, _logits(plain, tok, TEXTS[0]), atol=1e-5)
    gen = plain.generate(**tok(TEXTS[1], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == tok(TEXTS[1], return_tensors="pt")["input_ids"].shape[1] + 5


def test_prune_cli_writes_smaller_model_and_before_after_report(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"instruction": t, "input": "", "output": "Noted: " + t}) + "\n"
                            for t in TEXTS * 2), encoding="utf-8")
    out = tmp_path / "pruned"
    res = CliRunner().invoke(app, ["prune", "tiny-qwen2", "--heads", "0.5", "--out", str(out), "--data", str(data),
                                   "--calib-samples", "4", "--eval-samples", "4"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "prune.json").read_text())
    before, after = rep["rows"]
    assert rep["share_removed"] == 0.5 and after["params_m"] < before["params_m"]
    assert before["ppl"] > 0 and after["ppl"] > 0 and after["ms_per_token"] > 0
    assert len(rep["kept_heads"]) == 2 and all(len(k) == 2 for k in rep["kept_heads"])
    again = CliRunner().invoke(app, ["prune", "tiny-qwen2", "--heads", "0.5", "--out", str(out), "--data", str(data)])
    assert again.exit_code == 2 and "not empty" in again.output


def test_prune_refuses_what_it_cannot_do(base, tmp_path):
    model, _ = base
    with pytest.raises(ExportError, match="smallest prunable share"):
        plan_pruning(model, torch.ones(2, 4), 0.1)
    with pytest.raises(ExportError, match="between 0 and 1"):
        plan_pruning(model, torch.ones(2, 4), 1.5)
    ds, _ = load_causal_lm(resolve_source("tiny-deepseek-v3"))
    with pytest.raises(ExportError, match="MLA"):
        head_importance(ds, None, TEXTS)
