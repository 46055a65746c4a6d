"""The `data.pipeline` section: validated at config load, run before training, eval = validation split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from seektune.config import ConfigError, load_config


def _write(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def test_pipeline_options_are_checked_when_the_config_loads(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data:\n  pipeline:\n    - step: clean\n      near_treshold: 0.7\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.pipeline.0.*no option 'near_treshold'"):
        load_config(y)
    y.write_text("data:\n  pipeline:\n    - step: shuffle\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.pipeline.0.step"):
        load_config(y)
    y.write_text("data:\n  pipeline:\n    - step: split\n      ratios: '8:1'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ratios"):
        load_config(y)
    y.write_text("data:\n  pipeline:\n    - step: split\n      ratios: 8:1:1\n", encoding="utf-8")  # base-60 trap
    with pytest.raises(ConfigError, match="quoted '8:1:1'"):
        load_config(y)


def test_pipeline_runs_steps_and_points_training_at_outputs(tmp_path):
    from seektune.data.pipeline import run_pipeline

    rng = random.Random(0)
    words = "fever cough headache rest water sleep doctor clinic tablet dose morning evening".split()
    rows = [{"question": " ".join(rng.choice(words) for _ in range(8)) + f" {i}",
             "answer": " ".join(rng.choice(words) for _ in range(12))} for i in range(60)]
    rows += rows[:5]  # exact duplicates
    rows.append({"question": "empty?", "answer": ""})
    src = _write(tmp_path / "d.jsonl", rows)
    gen = _write(tmp_path / "g.jsonl", [{"instruction": f"say {i}", "input": "", "output": f"ok {i}"} for i in range(20)])
    y = tmp_path / "c.yaml"
    y.write_text(f"""
data:
  train: {src}
  pipeline:
    - step: clean
    - step: split
      ratios: [8, 1, 1]
    - step: augment
      swap_rate: 0.2
    - step: mix
      general: {gen}
      ratio: 0.1
    - step: curriculum
      pacing: sorted
train:
  output_dir: {tmp_path / 'run'}
""", encoding="utf-8")
    cfg = load_config(y)
    new = run_pipeline(cfg, tmp_path / "run" / "data", show_progress=False, log=lambda *_: None)
    rec = json.loads((tmp_path / "run" / "data" / "pipeline.json").read_text())
    clean = rec["steps"][0]["summary"]
    assert clean["read"] == 66 and clean["kept"] == 60 and clean["rejected_by_rule"]["exact_duplicate"] == 5
    assert new.data.pipeline == [] and new.data.curriculum is True
    assert new.data.eval.endswith("02_split/validation.jsonl") and Path(rec["test"]).exists()
    train = [json.loads(l) for l in open(new.data.train, encoding="utf-8")]
    val = [json.loads(l) for l in open(new.data.eval, encoding="utf-8")]
    assert any("_augmented" in r for r in train) and not any("_augmented" in r or "_mix" in r for r in val)
    assert any(r.get("_mix") == "general" for r in train)
    diffs = [r["_difficulty"] for r in train]
    assert diffs == sorted(diffs)
    assert cfg.data.train == str(src)  # the user's config is untouched


def test_curriculum_config_makes_the_trainer_sequential(tmp_path):
    from seektune.config import Config
    from seektune.engine.args import training_arguments

    cfg = Config.model_validate({"data": {"curriculum": True}, "train": {"output_dir": str(tmp_path)}})
    assert training_arguments(cfg, tmp_path, False).train_sampling_strategy == "sequential"
    cfg.data.curriculum = False
    assert training_arguments(cfg, tmp_path, False).train_sampling_strategy == "random"


def test_cli_data_run(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    src = _write(tmp_path / "d.jsonl", [{"question": f"q {i}", "answer": f"answer number {i}"} for i in range(10)])
    y = tmp_path / "c.yaml"
    y.write_text(f"data:\n  train: {src}\n  pipeline:\n    - step: clean\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["data", "run", str(y), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "01_clean.jsonl" in r.output and (tmp_path / "o" / "01_clean.rejects.jsonl").exists()


def test_automatic_eval_holdout_never_takes_augmented_records_or_their_sources(tmp_path):
    from seektune.data.augment import AugmentOptions, augment_file
    from seektune.data.sft import _train_only, _convert
    from seektune.data.common import read_all

    src = _write(tmp_path / "d.jsonl", [{"question": f"how to treat case {i} today", "answer": f"rest and water {i}"}
                                        for i in range(20)])
    augment_file(src, tmp_path / "a.jsonl", AugmentOptions(swap_rate=0.3), show_progress=False)
    rows = [json.loads(l) for l in open(tmp_path / "a.jsonl", encoding="utf-8")][:20]  # 10 sources + 10 copies
    rows += [{"question": f"unrelated {i}", "answer": f"plain {i}"} for i in range(10)]
    recs, _ = read_all(_write(tmp_path / "mixed.jsonl", rows))
    keep = _train_only(_convert(recs, "auto", None, []))
    assert keep == set(range(20))  # copies and their sources; the 10 unrelated records may be held out
