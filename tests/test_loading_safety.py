"""Loading safety (issue 23, item 4): no pickle is written, and a planted one is refused, never run.

The planted files are real torch pickles whose unpickling would call `os.system` (touching a marker
file): the tests check both the clear refusal and that the marker never appears. Nothing here
trains; the checkpoint side (no pickle in a seektune checkpoint) is asserted in test_faults.py.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from seektune.engine.checkpoint import COMPLETE
from seektune.utils.safe_files import UnsafeFileError, check_folder, is_pickle

SRC = Path(__file__).resolve().parents[1] / "src" / "seektune"


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> Path:
    """A torch file that runs `touch marker` when loaded by a full unpickler (torch.load weights_only=False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "extra": _Payload(marker)}, str(path))
    return path


def test_the_planted_file_is_really_dangerous(tmp_path):
    """The control: loading it the unsafe way does run the payload (so the refusals below mean something)."""
    marker = tmp_path / "ran"
    p = plant(tmp_path / "optimizer.pt", marker)
    torch.load(p, weights_only=False)
    assert marker.exists() and is_pickle(p)


def test_resume_refuses_a_checkpoint_with_a_planted_pickle(tmp_path):
    from seektune.config import Config
    from seektune.engine.run import RunFolder

    marker = tmp_path / "ran"
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    plant(ckpt / "optimizer.pt", marker)
    (ckpt / COMPLETE).write_text('{"step": 2}')
    cfg = Config.model_validate({"model": {"name_or_path": "tiny-qwen2"},
                                 "train": {"output_dir": str(tmp_path / "run")}})
    with pytest.raises(UnsafeFileError, match=r"optimizer\.pt: refusing to load this checkpoint.*posix\.system"):
        RunFolder.start(cfg, resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["adapter_model.bin", "pytorch_model.bin", "weights.dat"])
def test_eval_export_serve_refuse_a_run_whose_final_holds_a_planted_pickle(tmp_path, name):
    """resolve() is what eval, export, prune, serve and continue call first; the file's name does not matter."""
    from seektune.engine.artifacts import resolve

    marker = tmp_path / "ran"
    run = tmp_path / "run"
    final = run / "final"
    final.mkdir(parents=True)
    (run / "config.yaml").write_text("model: {name_or_path: tiny-qwen2}\n")
    (final / COMPLETE).write_text('{"final": true}')
    (final / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny-qwen2", "peft_type": "LORA"}')
    plant(final / name, marker)
    with pytest.raises(UnsafeFileError, match=f"{name}: refusing to load"):
        resolve(run)
    assert not marker.exists()


def test_a_model_folder_with_a_planted_pickle_is_refused_before_transformers_opens_it(tmp_path):
    from seektune.models.loader import ModelSpec, load_model

    marker = tmp_path / "ran"
    folder = tmp_path / "model"
    plant(folder / "pytorch_model.bin", marker)
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(UnsafeFileError, match="pytorch_model.bin: refusing to load this model folder"):
        load_model(ModelSpec(str(folder), tokenizer="tiny-qwen2"))
    assert not marker.exists()


def test_weights_only_torch_files_still_load(tmp_path):
    """Plain tensors and HF's own rng_state.pth (NumPy state inside) are not pickles that run code."""
    import random

    import numpy as np

    torch.save({"w": torch.ones(3)}, tmp_path / "pytorch_model.bin")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               tmp_path / "rng_state.pth")
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04 never loaded by anyone")
    check_folder(tmp_path)  # no error


def test_no_pickle_call_and_no_forced_remote_code_in_the_source():
    """seektune itself never calls torch.save / pickle, loads torch files only weights-only, and passes
    trust_remote_code only from the user's model.trust_remote_code (default False)."""
    from seektune.config import Config

    bad = []
    for f in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
            if name in ("torch.save", "pickle.dump", "pickle.dumps", "pickle.load", "pickle.loads", "joblib.load"):
                bad.append(f"{f.relative_to(SRC)}:{node.lineno}: {name}")
            if name == "torch.load" and kw.get("weights_only") != "True":
                bad.append(f"{f.relative_to(SRC)}:{node.lineno}: torch.load without weights_only=True")
            if "trust_remote_code" in kw and "trust_remote_code" not in kw["trust_remote_code"]:
                bad.append(f"{f.relative_to(SRC)}:{node.lineno}: trust_remote_code={kw['trust_remote_code']}")
    assert bad == []
    assert Config().model.trust_remote_code is False
