"""Preference alignment: data forms, reward model, DPO, PPO (tiny models, short pairs)."""

import gzip
import json

import pytest
import torch

from conftest import shared_data
from seektune.config import Config
from seektune.data.io import DataError
from seektune.data.preference import read_pairs, render_pair, split_hh
from seektune.data.templates import DS_ASSISTANT, DS_BOS, DS_EOS, DeepSeekV3Template

GOOD = [("Is water wet?", "Yes, water makes things wet.", "Purple monkey dishwasher."),
        ("Say hello.", "Hello!", "Go away."),
        ("What is 2+2?", "2+2 is 4.", "It is 5."),
        ("Name a fruit.", "An apple.", "A brick."),
        ("头痛怎么办？", "多休息，多喝水。", "不知道。"),
        ("Capital of France?", "Paris.", "London, obviously.")]


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in GOOD * 2]
    rows.insert(3, {"prompt": "Same?", "chosen": "same", "rejected": "same"})
    rows.insert(5, {"prompt": "Empty?", "chosen": "", "rejected": "something"})
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def test_pairs_form_and_bad_pairs_go_to_rejects_with_file_line(pairs_file):
    rejects = []
    pairs, read = read_pairs(pairs_file, rejects=rejects)
    assert read == 14 and len(pairs) == 12
    assert pairs[0].prompt == [{"role": "user", "content": "Is water wet?"}]
    assert (pairs[0].chosen, pairs[0].rejected) == ("Yes, water makes things wet.", "Purple monkey dishwasher.")
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons == {4: "chosen and rejected are identical", 6: "empty chosen response"}
    assert all(r["source"] == str(pairs_file) for r in rejects)


def test_sharegpt_form_with_history_and_message_sides(tmp_path):
    p = tmp_path / "sg.json"
    p.write_text(json.dumps([{
        "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                          {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Help me?"}],
        "chosen": {"from": "gpt", "value": "Sure, how?"}, "rejected": {"from": "gpt", "value": "No."}}]))
    (pair,), _ = read_pairs(p)
    assert [m["role"] for m in pair.prompt] == ["system", "user", "assistant", "user"]
    assert (pair.chosen, pair.rejected) == ("Sure, how?", "No.")


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path):
    t = "\n\nHuman: How do I cook rice?\n\nAssistant: Boil it.\n\nHuman: How long?\n\nAssistant: "
    msgs, reply = split_hh(t + "About 15 minutes.")
    assert msgs == [{"role": "user", "content": "How do I cook rice?"}, {"role": "assistant", "content": "Boil it."},
                    {"role": "user", "content": "How long?"}]
    assert reply == "About 15 minutes."
    p = tmp_path / "hh.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": t + "About 15 minutes.", "rejected": t + "Forever."}) + "\n")
        f.write(json.dumps({"chosen": t + "Same.", "rejected": t + "Same."}) + "\n")
        f.write(json.dumps({"chosen": t + "A.", "rejected": "\n\nHuman: other\n\nAssistant: B."}) + "\n")
    rejects = []
    pairs, read = read_pairs(p, rejects=rejects)
    assert read == 3 and len(pairs) == 1 and pairs[0].rejected == "Forever."
    assert [r["line"] for r in rejects] == [2, 3] and "differ before" in rejects[1]["reason"]


def test_unknown_form_is_a_clear_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match="looks like sft data .*not preference data"):
        read_pairs(p)


def test_real_preference_files_parse():
    pairs, read = read_pairs(shared_data("preference/dpo_zh_demo.json"))
    assert read == 300 and len(pairs) == 300 and pairs[0].prompt[-1]["role"] == "user"
    rejects = []
    pairs, read = read_pairs(shared_data("preference/hh_rlhf_harmless_test.jsonl.gz"), rejects=rejects)
    assert read == 2312 and len(pairs) + len(rejects) == 2312 and len(pairs) > 2250
    assert all(r["reason"] for r in rejects)


def test_deepseek_template_renders_prompt_and_completions():
    (pair,), _ = read_pairs_from([("Hi?", "Hello.", "Bye.")])
    r = render_pair(pair, DeepSeekV3Template())
    assert r.prompt == f"{DS_BOS}<｜User｜>Hi?{DS_ASSISTANT}"
    assert (r.chosen, r.rejected) == (f"Hello.{DS_EOS}", f"Bye.{DS_EOS}")


def read_pairs_from(rows, tmp=None):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    p = d / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}) + "\n" for q, c, r in rows))
    return read_pairs(p)


def test_stage_config_keys_reach_trl_and_old_align_keys_still_load(tmp_path):
    from trl import DPOConfig

    from seektune.config import load_config
    from seektune.engine.args import trl_args

    cfg = load_config(None, ["train.stage=dpo", "dpo.beta=0.3", "dpo.loss_type=ipo"])
    args = trl_args(DPOConfig, cfg, tmp_path, False, beta=cfg.dpo.beta, loss_type=[cfg.dpo.loss_type])
    assert args.beta == 0.3 and args.loss_type == ["ipo"] and args.bf16 is False
    with pytest.raises(Exception, match="ppo.kl_coeff: unknown key .*ppo.kl_coef"):
        load_config(None, ["train.stage=ppo", "ppo.reward_model=x", "ppo.kl_coeff=0.1"])
    # the old shared align: section loads into the stage's own section, with a note
    old = tmp_path / "old.yaml"
    old.write_text("train: {stage: dpo}\nalign: {beta: 0.3, loss_type: hinge, format: pairs, eval_pairs: 7}\n")
    cfg = load_config(old)
    assert (cfg.dpo.beta, cfg.dpo.loss_type, cfg.data.format, cfg.data.max_eval_samples) == (0.3, "hinge", "pairs", 7)
    assert any("align:" in n and "dpo:" in n for n in cfg.notes)
    old.write_text("train: {stage: dpo}\nalign: {reward_model: runs/rm}\n")
    with pytest.raises(Exception, match="align.reward_model: not used by stage dpo .*ppo.reward_model"):
        load_config(old)


# ---------------------------------------------------------------------------------------------
# Tiny-model runs
# ---------------------------------------------------------------------------------------------

def _cfg(tmp_path, train_file, stage, name, **options):
    return Config.model_validate({
        "model": {"name_or_path": "tiny-qwen2"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train_file), "eval": str(train_file), "template": "deepseek-v3", "max_length": 48,
                 "max_eval_samples": 8},
        "train": {"stage": stage, "output_dir": str(tmp_path / name), "max_steps": 2, "batch_size": 4, "lr": 2e-2,
                  "logging_steps": 1, "seed": 0, "num_threads": 1},
        stage: {"max_prompt_length": 24, **options}})


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    from conftest import train

    tmp = tmp_path_factory.mktemp("rm")
    p = tmp / "pairs.jsonl"
    p.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                         for q, c, r in GOOD))
    return train(_cfg(tmp, p, "rm", "rm")), tmp


def test_rm_head_outputs_one_scalar_and_pairwise_accuracy_is_reported(rm_run):
    from seektune.eval.preference import load_reward_model, score_texts

    summary, tmp = rm_run
    model = summary.model
    tok = summary.tokenizer
    enc = tok(["a b c", "d"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 1)
    after = summary.summary["details"]["heldout_after"]
    assert after["pairs"] == 6 and 0.0 <= after["accuracy"] <= 1.0
    # training on these pairs pushes chosen above rejected on them
    assert after["margin"] > summary.summary["details"]["heldout_before"]["margin"]
    rm, rm_tok = load_reward_model(str(tmp / "rm"))  # the run folder is a PPO reward model
    texts = ["<｜User｜>hi<｜Assistant｜>Hello!", "x"]
    assert torch.allclose(score_texts(rm, rm_tok, texts), score_texts(model, tok, texts), atol=1e-4)


def test_dpo_steps_raise_the_chosen_minus_rejected_margin(tmp_path):
    from conftest import train

    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                         for q, c, r in GOOD[:4]))
    s = train(_cfg(tmp_path, p, "dpo", "dpo", beta=0.5)).summary
    b, a = s["details"]["heldout_before"], s["details"]["heldout_after"]
    assert b["margin"] == pytest.approx(0.0, abs=1e-6)  # LoRA B=0: the policy equals its reference
    assert a["margin"] > 0.05 and a["accuracy"] > 0.5
    # the policy's own log-prob margin moved the right way, the reference (adapter off) did not move
    assert a["chosen_logp"] - a["rejected_logp"] > b["chosen_logp"] - b["rejected_logp"]
    recs = [json.loads(l) for l in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in recs)
    assert (tmp_path / "dpo" / "final" / "adapter_config.json").exists()


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------

def test_gae_matches_a_hand_computation():
    from seektune.stages.ppo import gae

    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.2, 0.4, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 4th token is padding: its value must not leak in
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.4
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, (adv + v) * m)


def test_kl_shaping_clipping_and_adaptive_kl():
    from seektune.stages.ppo import AdaptiveKL, kl_shaped_rewards, ppo_losses

    logp, ref = torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([[-1.5, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rew, kl = kl_shaped_rewards(torch.tensor([2.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(rew, torch.tensor([[-0.05, 2.0, 0.0]])) and torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    # a ratio far above 1+clip with positive advantage gives no more than the clipped objective
    old = torch.zeros(1, 2)
    pg, _, st = ppo_losses(torch.tensor([[1.0, 1.0]]), old, torch.zeros(1, 2), torch.zeros(1, 2),
                           torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0.2, 0.2)
    assert pg.item() == pytest.approx(-1.2) and st["clipfrac"] == 1.0
    ctl = AdaptiveKL(0.1, target=1.0, horizon=100)
    ctl.update(kl=3.0, n_samples=10)
    assert ctl.value > 0.1
    ctl.update(kl=0.0, n_samples=10)
    fixed = AdaptiveKL(0.1, None, 100)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1


def test_ppo_runs_end_to_end_on_tiny_models(rm_run, tmp_path):
    from conftest import train

    _, tmp = rm_run
    cfg = _cfg(tmp_path, tmp / "pairs.jsonl", "ppo", "ppo", reward_model=str(tmp / "rm"), rollout_batch_size=4,
               max_new_tokens=6, ppo_epochs=1, top_k=50)
    cfg.train.max_steps = 2
    cfg.train.batch_size = 2
    cfg.data.eval = None
    s = train(cfg)
    run = tmp_path / "ppo"
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert {"score", "reward", "kl", "entropy", "kl_coef", "pg_loss", "vf_loss"} <= set(r)
        assert all(map(lambda k: r[k] == r[k], ("score", "kl", "entropy")))  # finite, not NaN
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # first rollout: policy == reference
    assert (run / "reward_curve.png").stat().st_size > 1000
    lora_b = [p for n, p in s.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "PPO updated no LoRA weight"
    assert (run / "final" / "value_head.safetensors").exists()
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.bin")), "no pickles in the run folder"


def test_cli_ppo_without_reward_model_is_a_user_error(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    cfg = tmp_path / "ppo.yaml"
    cfg.write_text("model: {name_or_path: tiny-qwen2}\ntrain: {stage: ppo, output_dir: %s}\n" % (tmp_path / "run"))
    res = CliRunner().invoke(app, ["train", str(cfg), "--no-progress"])
    assert res.exit_code == 2 and "ppo.reward_model" in res.output
