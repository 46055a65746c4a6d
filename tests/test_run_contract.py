"""The run-folder contract, across every stage: kill-and-resume gives the same run, one summary.json
shape, unused keys are errors, and a fresh run never mixes with an older one.

Tiny models (tiny-qwen2, LoRA r 4), a handful of steps each, one thread per process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import kill_when_exists, train
from seektune.engine.checkpoint import COMPLETE

GOOD = [("Is water wet?", "Yes, water makes things wet.", "Purple monkey dishwasher."),
        ("Say hello.", "Hello!", "Go away."),
        ("What is 2+2?", "2+2 is 4.", "It is 5."),
        ("Name a fruit.", "An apple.", "A brick."),
        ("头痛怎么办？", "多休息，多喝水。", "不知道。"),
        ("Capital of France?", "Paris.", "London, obviously."),
        ("What colour is the sky?", "Blue, on a clear day.", "Sky is a fish."),
        ("Count to three.", "One, two, three.", "Seven.")]


def _write_pairs(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}, ensure_ascii=False) + "\n"
                            for q, c, r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Training pairs (16), a separate eval file (4 pairs), a classification file (16) and an SFT file (16)."""
    d = tmp_path_factory.mktemp("data")
    pairs = _write_pairs(d / "pairs.jsonl", [(f"{q} ({i})", c, r) for i in range(2) for q, c, r in GOOD])
    ev = _write_pairs(d / "eval_pairs.jsonl", GOOD[:4])
    cls = d / "cls.jsonl"
    cls.write_text("".join(json.dumps({"text": f"{w} example {i}", "label": w}) + "\n"
                           for i in range(8) for w in ("good", "bad")), encoding="utf-8")
    sft = d / "sft.jsonl"
    sft.write_text("".join(json.dumps({"instruction": q, "input": "", "output": c}, ensure_ascii=False) + "\n"
                           for q, c, _ in GOOD * 2), encoding="utf-8")
    return {"pairs": pairs, "eval": ev, "cls": cls, "sft": sft}


def _records(run_dir) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run_dir) if "loss" in r}


def _kinds(run_dir) -> Counter:
    """(step, kind) of every metrics.jsonl record; kind: train (a step's loss), eval, end (the end-of-training
    record HF logs at the last step)."""
    return Counter((r.get("step"), "eval" if any(k.startswith("eval_") for k in r) else
                    "end" if "train_runtime" in r else "train") for r in _records(run_dir))


def _assert_no_step_twice(run_dir, like=None) -> None:
    """No step's train record twice; with `like` (an uninterrupted run): exactly its records, by step and kind."""
    kinds = _kinds(run_dir)
    twice = [k for k, n in kinds.items() if n > 1 and k[1] == "train"]
    assert not twice, f"logged twice in {run_dir}/metrics.jsonl: {twice}"
    if like is not None:
        assert kinds == _kinds(like), (kinds - _kinds(like), _kinds(like) - kinds)


# ---------------------------------------------------------------------------------------------
# 1. SIGKILL then --resume == uninterrupted, for dpo and rm (sft: tests/test_train_control.py)
# ---------------------------------------------------------------------------------------------

def _train_cmd(cfg_path, *extra):
    return [sys.executable, "-m", "seektune", "train", str(cfg_path), "--no-progress", *extra]


def _pref_yaml(stage: str, data: dict, out: Path) -> str:
    return (f"model: {{name_or_path: tiny-qwen2}}\n"
            f"adapter: {{method: lora, r: 4, alpha: 8, dropout: 0}}\n"
            f"data: {{train: {data['pairs']}, eval: {data['eval']}, template: deepseek-v3, max_length: 48}}\n"
            f"train: {{stage: {stage}, max_steps: 8, save_steps: 2, logging_steps: 1, batch_size: 2, lr: 0.01, "
            f"seed: 3, num_threads: 1, output_dir: {out}}}\n"
            f"{stage}: {{max_prompt_length: 24}}\n")


# dpo in `make test` (the pair stages share one trainer path); rm too in the long form (it costs ~35 s)
@pytest.fixture(scope="module", params=["dpo", "rm"] if os.environ.get("SEEKTUNE_LONG") == "1" else ["dpo"])
def resumed(request, data, tmp_path_factory):
    """An uninterrupted run and a run SIGKILLed after checkpoint-4 then resumed (--resume)."""
    stage = request.param
    tmp = tmp_path_factory.mktemp(f"resume_{stage}")
    full, killed = tmp / "full.yaml", tmp / "killed.yaml"
    full.write_text(_pref_yaml(stage, data, tmp / "full"))
    killed.write_text(_pref_yaml(stage, data, tmp / "killed"))
    r_full = subprocess.run(_train_cmd(full), capture_output=True, text=True, timeout=600)
    assert r_full.returncode == 0, r_full.stderr[-3000:]
    kill_when_exists(_train_cmd(killed), tmp / "killed" / "checkpoints" / "checkpoint-4" / COMPLETE)
    left = os.listdir(tmp / "killed" / "checkpoints")
    assert "checkpoint-8" not in left and not (tmp / "killed" / "final").exists(), left
    r = subprocess.run(_train_cmd(killed, "--resume"), capture_output=True, text=True, timeout=600)
    return {"stage": stage, "full": tmp / "full", "killed": tmp / "killed", "resume": r}


def test_sigkill_then_resume_matches_uninterrupted_run(resumed):
    res, stage = resumed, resumed["stage"]
    r = res["resume"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr
    a, b = _losses(res["full"]), _losses(res["killed"])
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert math.isclose(a[step], b[step], rel_tol=0, abs_tol=1e-5), (stage, step, a[step], b[step])
    # every other logged number of those steps too (trl's cumulative num_tokens and the health counters
    # included), except what measures this launch: speed, memory, and engine.trainer.TokenCounter's
    # real_tokens/padding_share, which start again at 0 in a resumed launch (sft's summary divides them by
    # the launch's train_seconds, so they stay per launch)
    per_launch = {"tokens_per_s", "real_tokens", "padding_share", "mem_rss_gb"}
    full_recs = {r["step"]: r for r in _records(res["full"]) if "loss" in r}
    for r in (r for r in _records(res["killed"]) if "loss" in r):
        for k, v in r.items():
            if k not in per_launch and isinstance(v, (int, float)):
                assert math.isclose(v, full_recs[r["step"]][k], rel_tol=0, abs_tol=1e-5), (stage, r["step"], k)
    _assert_no_step_twice(res["killed"], like=res["full"])
    s_full = json.loads((res["full"] / "summary.json").read_text())
    s_res = json.loads((res["killed"] / "summary.json").read_text())
    # the summary's train_loss is the whole run's mean, not the mean of the resumed launch's steps
    assert math.isclose(s_full["train_loss"], s_res["train_loss"], rel_tol=0, abs_tol=1e-5), \
        (s_full["train_loss"], s_res["train_loss"])
    assert Path(s_res["resumed_from"] or "").name in ("checkpoint-4", "checkpoint-6"), s_res["resumed_from"]
    assert s_full["evidence"], f"{stage} wrote no evidence"
    # "before" is measured once per run (before.json) and read back by the resumed launch
    assert [e["before"] for e in s_res["evidence"]] == [e["before"] for e in s_full["evidence"]]
    for ea, eb in zip(s_full["evidence"], s_res["evidence"]):
        assert math.isclose(ea["after"], eb["after"], rel_tol=0, abs_tol=1e-4), (stage, ea, eb)


# ---------------------------------------------------------------------------------------------
# 2. PPO: --resume continues at the next iteration with the same random stream
# ---------------------------------------------------------------------------------------------

def _cfg(data: dict, stage: str, out: Path, **over):
    """A tiny in-process config; `over` = {"section.key": value}."""
    from seektune.config import STAGES, Config

    raw = {"model": {"name_or_path": "tiny-qwen2"},
           "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
           "data": {"train": str(data["pairs"]), "eval": str(data["eval"]), "template": "deepseek-v3",
                    "max_length": 48},
           "train": {"stage": stage, "output_dir": str(out), "max_steps": 2, "batch_size": 2, "lr": 0.01,
                     "logging_steps": 1, "seed": 3, "num_threads": 1}}
    options = STAGES[stage].options
    if options is not None and "max_prompt_length" in options.model_fields:
        raw[stage] = {"max_prompt_length": 24}
    for k, v in over.items():
        *path, leaf = k.split(".")
        node = raw
        for p in path:
            node = node.setdefault(p, {})
        if v is None:
            node.pop(leaf, None)
        else:
            node[leaf] = v
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def rm_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "rm"
    train(_cfg(data, "rm", out))
    return out


def _ppo_cfg(data, rm_run, out):
    return _cfg(data, "ppo", out, **{"data.eval": None, "data.eval_ratio": 0.0, "train.max_steps": 4,
                                     "train.save_steps": 2, "ppo.reward_model": str(rm_run),
                                     "ppo.rollout_batch_size": 4, "ppo.max_new_tokens": 6, "ppo.ppo_epochs": 1,
                                     "ppo.top_k": 50})


@pytest.fixture(scope="module")
def ppo_runs(data, rm_run, tmp_path_factory) -> dict:
    """A 4-iteration PPO run (checkpoint-2 is kept: the loop saves at it % 2 == 0 while it < 4), and a copy
    of that folder resumed from its checkpoint-2, so iterations 3-4 run again from the saved state."""
    from seektune.stages import run_stage

    tmp = tmp_path_factory.mktemp("ppo")
    full = tmp / "full"
    train(_ppo_cfg(data, rm_run, full))
    assert [p.name for p in sorted((full / "checkpoints").glob("checkpoint-*"))] == ["checkpoint-2"]
    copy = tmp / "resumed"
    shutil.copytree(full, copy)
    res = run_stage(_ppo_cfg(data, rm_run, copy), resume=True, progress=False)
    return {"full": full, "resumed": copy, "result": res}


def test_ppo_resume_continues_with_the_same_iterations(ppo_runs):
    full = {r["step"]: r for r in _records(ppo_runs["full"]) if "score" in r}
    res = {r["step"]: r for r in _records(ppo_runs["resumed"]) if "score" in r}
    assert sorted(full) == sorted(res) == [1, 2, 3, 4]
    _assert_no_step_twice(ppo_runs["resumed"], like=ppo_runs["full"])
    for it in (3, 4):
        for k in ("score", "kl", "reward", "entropy", "kl_coef", "pg_loss", "vf_loss", "response_length"):
            assert math.isclose(full[it][k], res[it][k], rel_tol=0, abs_tol=1e-5), (it, k, full[it][k], res[it][k])
    s = ppo_runs["result"].summary
    assert Path(s["resumed_from"]).name == "checkpoint-2"
    s_full = json.loads((ppo_runs["full"] / "summary.json").read_text())
    assert [(e["before"], e["after"]) for e in s["evidence"]] == [(e["before"], e["after"]) for e in s_full["evidence"]]
    # the checkpoint holds no pickle: adapter, value head, optimizer, RNG in safetensors, the rest in JSON
    ck = ppo_runs["full"] / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in ck.iterdir()) == ["adapter.safetensors", "optimizer.safetensors", "rng.safetensors",
                                                    COMPLETE, "state.json", "value_head.safetensors"]


# ---------------------------------------------------------------------------------------------
# 3. One summary.json shape and one run-folder contract for every stage
# ---------------------------------------------------------------------------------------------

SUMMARY_KEYS = {"stage", "status", "model", "model_path", "adapter", "trainable_params", "total_params",
                "adapted_kinds", "data", "steps", "train_loss", "train_seconds", "total_seconds", "threads",
                "world_size", "resumed_from", "evidence", "curves", "final", "warnings", "details"}
# The only pickles in a run folder are HF Trainer's own checkpoint files, which HF loads back with
# weights_only=True: optimizer.pt, scheduler.pt and rng_state.pth (rng_state_<rank>.pth on several
# processes), in checkpoints/checkpoint-N/ of the HF-Trainer stages (sft, classify, rm, dpo). The ppo
# checkpoints hold none. trl's DPO checkpoints also carry ref/ (the reference adapter, safetensors).
HF_CHECKPOINT_PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_*.pth")


def _assert_run_folder_contract(run_dir: Path, stage: str) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s) == SUMMARY_KEYS, (stage, set(s) ^ SUMMARY_KEYS)
    assert s["stage"] == stage and s["status"] == "done"
    assert s["evidence"], f"{stage}: no evidence row"
    for row in s["evidence"]:
        assert {"name", "before", "after", "better"} <= set(row), (stage, row)
        assert row["better"] in ("higher", "lower"), (stage, row)
        assert isinstance(row["before"], (int, float)) and isinstance(row["after"], (int, float)), (stage, row)
    assert all({"title", "keys"} <= set(c) for c in s["curves"]), (stage, s["curves"])
    assert Path(s["final"]) == run_dir / "final" and (run_dir / "final" / COMPLETE).exists(), stage
    assert not (run_dir / "final.partial").exists()
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()
    for p in run_dir.rglob("*"):
        rel = p.relative_to(run_dir)
        assert p.name != "training_args.bin", f"{stage}: {rel}"
        assert p.suffix not in (".bin", ".pkl", ".pickle"), f"{stage}: pickle {rel}"
        if p.suffix in (".pt", ".pth"):
            assert rel.parts[0] == "checkpoints" and any(p.match(g) for g in HF_CHECKPOINT_PICKLES), \
                f"{stage}: {rel} is a pickle seektune wrote"
    for ck in (run_dir / "checkpoints").glob("checkpoint-*"):
        assert (ck / COMPLETE).exists(), f"{stage}: {ck} without its completion marker"
    return s


def _sft_cfg(data, out):
    return _cfg(data, "sft", out, **{"data.train": str(data["sft"]), "data.eval": None, "data.eval_ratio": 0.25,
                                     "eval.before_after": False})


def _classify_cfg(data, out, **over):
    return _cfg(data, "classify", out, **{"model.task": "sequence_classification", "data.train": str(data["cls"]),
                                          "data.eval": None, "data.template": None, "data.eval_ratio": 0.25,
                                          "data.max_length": 16, "train.batch_size": 4, **over})


@pytest.fixture(scope="module")
def classify_run(data, tmp_path_factory) -> Path:
    """classify honours train.adversarial (FGM) and train.ewc: both in one 2-step run."""
    out = tmp_path_factory.mktemp("classify") / "run"
    train(_classify_cfg(data, out, **{"train.adversarial": {"method": "fgm"},
                                      "train.ewc": {"samples": 4, "lambda": 100.0}}))
    return out


def test_classify_honours_adversarial_and_ewc(classify_run):
    steps = [r for r in _records(classify_run) if "loss" in r]
    assert len(steps) == 2
    assert all("adv_loss" in r and math.isfinite(r["adv_loss"]) for r in steps), steps
    assert all("ewc_penalty" in r for r in steps) and steps[-1]["ewc_penalty"] > 0.0
    assert (classify_run / "ewc_fisher.safetensors").exists()


def test_every_stage_writes_one_summary_shape(data, tmp_path, rm_run, ppo_runs, classify_run):
    runs = {"rm": rm_run, "ppo": ppo_runs["full"], "classify": classify_run}
    train(_sft_cfg(data, tmp_path / "sft"))
    runs["sft"] = tmp_path / "sft"
    train(_cfg(data, "dpo", tmp_path / "dpo"))
    runs["dpo"] = tmp_path / "dpo"
    shapes = {stage: _assert_run_folder_contract(path, stage) for stage, path in runs.items()}
    assert len({tuple(sorted(s)) for s in shapes.values()}) == 1
    assert (ppo_runs["resumed"] / "final" / COMPLETE).exists()
    _assert_run_folder_contract(ppo_runs["resumed"], "ppo")


@pytest.mark.parametrize("stage", ["kto", "orpo", "simpo"])
def test_the_other_preference_stages_write_the_same_summary_shape(data, tmp_path, stage):
    train(_cfg(data, stage, tmp_path / stage))
    _assert_run_folder_contract(tmp_path / stage, stage)


def test_resumed_runs_keep_the_contract(resumed):
    for which in ("full", "killed"):
        _assert_run_folder_contract(resumed[which], resumed["stage"])
    # the trainer state is safetensors + JSON (engine/state_files.py): no pickle in a checkpoint
    ck = sorted((resumed["full"] / "checkpoints").glob("checkpoint-*"))[-1]
    names = {p.name for p in ck.iterdir()}
    assert not {n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))}, names
    assert {"optimizer.safetensors", "optimizer.json", "scheduler.json"} <= names
    assert any(n.startswith("rng_state") and n.endswith(".safetensors") for n in names), names


# ---------------------------------------------------------------------------------------------
# 4. A key the stage does not use is an error naming key and stage, from `train` and `config`
# ---------------------------------------------------------------------------------------------

UNUSED = [
    ("train: {stage: dpo, adversarial: {method: fgm}}", "train.adversarial: not used by stage dpo"),
    ("train: {stage: rm, ewc: {samples: 4}}", "train.ewc: not used by stage rm"),
    ("model: {task: sequence_classification}\ntrain: {stage: classify, replay: {file: g.jsonl}}",
     "train.replay: not used by stage classify"),
    ("train: {stage: dpo, fused_loss: false}", "train.fused_loss: not used by stage dpo"),
    ("train: {stage: rm}\neval: {general_eval: g.jsonl}", "eval.general_eval: not used by stage rm"),
    ("train: {stage: sft}\ndpo: {beta: 0.3}", "dpo.beta: not used by stage sft"),
    ("model: {task: sequence_classification}\ntrain: {stage: dpo}", "model.task: stage dpo trains causal_lm"),
    ("train: {stage: sft}\ndata: {format: hh}", "data.format: 'hh' is a preference format; stage sft reads sft"),
]


def _cli_cfg(tmp_path, text: str) -> Path:
    """Merge `text` (YAML sections) over a base config, so a section named twice is one mapping."""
    import yaml

    base = {"model": {"name_or_path": "tiny-qwen2"}, "data": {"train": str(tmp_path / "x.jsonl")},
            "train": {"output_dir": str(tmp_path / "run")}}
    for sec, vals in yaml.safe_load(text).items():
        base[sec] = {**base.get(sec, {}), **vals}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


@pytest.mark.parametrize("text,message", UNUSED, ids=[m.split(":")[0] for _, m in UNUSED])
def test_unused_key_is_an_error_from_train_and_config(tmp_path, text, message):
    from typer.testing import CliRunner

    from seektune.cli import app

    cfg = _cli_cfg(tmp_path, text)
    for cmd in (["train", str(cfg), "--no-progress"], ["config", str(cfg)]):
        r = CliRunner().invoke(app, cmd)
        out = " ".join(r.output.split())  # rich wraps long lines
        assert r.exit_code == 2, (cmd[0], r.exit_code, r.output)
        assert message in out, (cmd[0], r.output)
    assert not (tmp_path / "run").exists(), "a rejected config must not start a run"


def test_unused_key_from_the_real_command_line(tmp_path):
    cfg = _cli_cfg(tmp_path, "train: {stage: dpo, adversarial: {method: fgm}}")
    r = subprocess.run([sys.executable, "-m", "seektune", "train", str(cfg)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "train.adversarial: not used by stage dpo" in r.stderr


def test_nproc_on_a_single_process_stage_is_an_error(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    cfg = _cli_cfg(tmp_path, f"train: {{stage: ppo}}\nppo: {{reward_model: {tmp_path / 'rm'}}}")
    r = CliRunner().invoke(app, ["train", str(cfg), "--nproc", "2", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "--nproc: stage ppo runs in one process" in " ".join(r.output.split())
    assert not (tmp_path / "run" / "launch_config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# 5. A fresh run refuses a folder that holds another run, unless --overwrite (which clears it)
# ---------------------------------------------------------------------------------------------

def test_fresh_run_refuses_an_old_run_and_overwrite_clears_it(data, tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app
    from seektune.config import ConfigError
    from seektune.stages import run_stage

    cfg = _sft_cfg(data, tmp_path / "run")
    cfg.train.save_steps = 1
    run = tmp_path / "run"
    old = run / "checkpoints" / "checkpoint-99"
    old.mkdir(parents=True)
    (old / COMPLETE).write_text(json.dumps({"step": 99}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 99, "loss": 9.9}) + "\n")

    with pytest.raises(ConfigError, match="holds another run .*--resume.*--overwrite"):
        run_stage(cfg, progress=False)
    yaml_path = tmp_path / "sft.yaml"
    yaml_path.write_text(cfg.to_yaml())
    r = CliRunner().invoke(app, ["train", str(yaml_path), "--no-progress"])
    assert r.exit_code == 2 and "holds another run" in " ".join(r.output.split()), r.output
    assert (old / COMPLETE).exists() and "9.9" in (run / "metrics.jsonl").read_text(), "a refusal changed the folder"

    run_stage(cfg, overwrite=True, progress=False)
    assert not old.exists(), "--overwrite left the old run's checkpoint-99"
    assert all(r["step"] <= 2 for r in _records(run))
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    before_resume = _kinds(run)
    # the newest checkpoint is this run's own, taken at its last step: the resume only re-does what came
    # after it (the end-of-training record, the final evaluation), which metrics.jsonl then holds once
    s = run_stage(cfg, resume=True, progress=False).summary
    assert Path(s["resumed_from"]).name == "checkpoint-2"
    assert not old.exists()
    _assert_no_step_twice(run)
    assert _kinds(run) == before_resume
