"""KTO, ORPO, SimPO (and DPO beside them): two steps on a tiny model move the adapter, log their
margins, report the common held-out measure, and resume from a checkpoint to the same weights."""

import json
import shutil

import pytest
import torch
from transformers import TrainerCallback

from conftest import train
from seektune.config import Config

GOOD = [("Is water wet?", "Yes, water makes things wet.", "Purple monkey dishwasher."),
        ("Say hello.", "Hello!", "Go away."), ("What is 2+2?", "2+2 is 4.", "It is 5."),
        ("Name a fruit.", "An apple.", "A brick."), ("头痛怎么办？", "多休息，多喝水。", "不知道。"),
        ("Capital of France?", "Paris.", "London, obviously.")]
LOGGED = {"dpo": "rewards/margins", "kto": "rewards/margins", "orpo": "log_odds_ratio", "simpo": "rewards/margins"}


class Snapshot(TrainerCallback):
    def __init__(self):
        self.before = {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    p.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                         for q, c, r in GOOD * 2), encoding="utf-8")
    return p


def _cfg(tmp_path, pairs, stage, steps=2, **train_kw):
    return Config.model_validate({
        "model": {"name_or_path": "tiny-qwen2"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(pairs), "eval": str(pairs), "template": "deepseek-v3", "max_length": 48,
                 "max_eval_samples": 6},
        "train": {"stage": stage, "output_dir": str(tmp_path / stage), "max_steps": steps, "batch_size": 4,
                  "lr": 2e-2, "logging_steps": 1, "seed": 0, "num_threads": 1, **train_kw},
        stage: {"max_prompt_length": 24}})


@pytest.mark.parametrize("stage", ["kto", "orpo", "simpo", "dpo"])
def test_two_steps_move_the_adapter_and_log_the_margins(tmp_path, pairs, stage):
    snap = Snapshot()
    res = train(_cfg(tmp_path, pairs, stage), callbacks=[snap])
    after = dict(res.model.named_parameters())
    lora = [n for n in snap.before if "lora_" in n]
    assert lora and any(not torch.equal(snap.before[n], after[n].detach()) for n in lora), "no LoRA weight moved"
    moved = [n for n in snap.before if "lora_" not in n and not torch.equal(snap.before[n], after[n].detach())]
    assert not moved, f"base weights changed: {moved[:3]}"
    recs = [json.loads(x) for x in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2]
    assert all(LOGGED[stage] in r for r in recs if "loss" in r), LOGGED[stage]
    s = res.summary
    keys = {row["key"] for row in s["evidence"]}
    assert {"logp_accuracy", "logp_margin"} <= keys  # the measure every preference stage shares
    acc = next(row for row in s["evidence"] if row["key"] == "logp_accuracy")
    assert acc["n"] == 6 and 0.0 <= acc["after"] <= 1.0
    assert (tmp_path / stage / "final" / "adapter_config.json").exists()


@pytest.mark.parametrize("stage", ["kto", "orpo", "simpo"])
def test_resume_from_a_checkpoint_reaches_the_same_weights(tmp_path, pairs, stage):
    """4 steps uninterrupted vs. the same run resumed from checkpoint-2 (its later files removed)."""
    from safetensors.torch import load_file

    from seektune.stages import run_stage

    full = _cfg(tmp_path, pairs, stage, steps=4, save_steps=2)
    train(full)
    a = tmp_path / stage
    b = tmp_path / f"{stage}-resumed"
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    shutil.rmtree(b / "checkpoints" / "checkpoint-4", ignore_errors=True)
    cfg = _cfg(tmp_path, pairs, stage, steps=4, save_steps=2)
    cfg.train.output_dir = str(b)
    res = run_stage(cfg, resume=True, progress=False)
    assert res.summary["resumed_from"].endswith("checkpoint-2")
    steps = [json.loads(x)["step"] for x in (b / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4], "every step logged once"
    wa = load_file(str(a / "final" / "adapter_model.safetensors"))
    wb = load_file(str(b / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_kto_takes_unpaired_records(tmp_path):
    p = tmp_path / "unpaired.jsonl"
    rows = [{"prompt": q, "completion": c, "label": True} for q, c, _ in GOOD] + \
           [{"prompt": q, "completion": r, "label": "bad"} for q, _, r in GOOD] + \
           [{"prompt": "x", "completion": "y", "label": "maybe"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = _cfg(tmp_path, p, "kto")
    cfg.data.eval = None
    cfg.data.eval_ratio = 0.25
    s = train(cfg).summary
    assert s["data"]["read"] == 13 and s["data"]["rejected"] == 1  # the "maybe" label, with its reason
    assert s["data"]["train"] + s["data"]["eval"] == 12
    rej = [json.loads(x) for x in (tmp_path / "kto" / "rejects.jsonl").read_text().splitlines()]
    assert rej[0]["line"] == 13 and "neither desirable" in rej[0]["reason"]
    assert s["evidence"][0]["key"] == "logp_margin"
