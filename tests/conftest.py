"""Shared fixtures: tiny hand-made data files and helpers. Real data lives in ../shared/data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _own_cores() -> None:
    """Under pytest-xdist (`make test` runs `-n auto`), each worker keeps a disjoint share of the cores: the
    threads torch starts (configure_threads reads the affinity) and every subprocess a test launches stay on
    them, so two workers never oversubscribe the machine (that was 3-8x slower than one job alone)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index = int(worker.removeprefix("gw"))
    if len(cores) >= count:
        share = set(cores[index::count])
        os.sched_setaffinity(0, share)
        os.environ["OMP_NUM_THREADS"] = str(len(share))


_own_cores()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

QA = [
    ("What helps a mild headache?", "Rest, drink water and, if needed, take a standard dose of paracetamol."),
    ("感冒了怎么办？", "多休息，多喝水，必要时服用对症药物。"),
    ("How much water should adults drink?", "About two litres a day, more in hot weather or during exercise."),
    ("高血压患者饮食注意什么？", "少盐少油，多吃蔬菜水果，控制体重，戒烟限酒。"),
]


def shared_data(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"../shared/data/{rel} not present")
    return p


def write_alpaca(p: Path) -> Path:
    """24 small Alpaca records (the QA pairs above, numbered)."""
    with open(p, "w", encoding="utf-8") as f:
        for i in range(24):
            q, a = QA[i % len(QA)]
            f.write(json.dumps({"instruction": q, "input": "", "output": f"{a} ({i})"}, ensure_ascii=False) + "\n")
    return p


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_alpaca(tmp_path / "alpaca.jsonl")


def kill_when_exists(cmd: list[str], path: Path, timeout: float = 600) -> None:
    """Start `cmd`, SIGKILL it as soon as `path` exists (a checkpoint marker, a trial folder)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"the run never wrote {path}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def tiny_config(tmp_path, train_file, model="tiny-qwen2", **over):
    from seektune.config import Config

    cfg = Config.model_validate({
        "model": {"name_or_path": model},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train_file), "max_length": 96, "eval_ratio": 0.15, "cache": False},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4, "lr": 1e-2,
                  "logging_steps": 1, "seed": 0},
    })
    for k, v in over.items():
        sec, key = k.split("__")
        setattr(getattr(cfg, sec), key, v)
    return cfg


def train(cfg, callbacks=None, **kw):
    """Run cfg's stage into its (fresh) run folder, no progress bar; returns the StageResult."""
    from seektune.stages import run_stage

    return run_stage(cfg, progress=False, overwrite=True, callbacks=callbacks, **kw)
