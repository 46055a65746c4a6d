"""Injected faults (issue 23, item 2): a signal, a SIGKILL mid-write, a full disk, a damaged cache.

Each fault is injected at a known point, and the test checks what is left: a complete checkpoint that
loads, a clear error that names what was kept, never a "latest" checkpoint or a final/ that is only
half there. SIGKILL tests run a small writer in a subprocess (no training: a few seconds each); the
training-level ones run tiny-qwen2 (LoRA r 4) for two steps in-process. The full disk is a real
1 MiB tmpfs when the tests run as root and can mount one, and a write patched to raise ENOSPC
inside the trainer (which no tmpfs size can hit at exactly the second checkpoint).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, train
from seektune.engine.checkpoint import COMPLETE, CheckpointClient, CheckpointError


def _cfg(tmp_path, data, **over):
    cfg = tiny_config(tmp_path, data, data__eval_ratio=0.0, data__max_length=48, train__batch_size=2, **over)
    cfg.eval.report = False
    cfg.eval.before_after = False
    return cfg


def _steps(run_dir) -> list[int]:
    return [r["step"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def _no_pickles(folder: Path) -> list[str]:
    from seektune.utils.safe_files import is_pickle

    return [p.name for p in folder.rglob("*") if p.is_file() and is_pickle(p)]


# ---------------------------------------------------------------------------------------------
# SIGTERM / Ctrl-C: the step finishes, a checkpoint is written, training stops, --resume continues
# ---------------------------------------------------------------------------------------------

def test_sigterm_writes_a_resumable_checkpoint_and_stops(tmp_path, alpaca_file):
    from transformers import TrainerCallback

    from seektune.engine.interrupt import TrainingInterrupted

    class SignalAtStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid-run

    cfg = _cfg(tmp_path, alpaca_file, train__max_steps=2, train__save_steps=None)
    run = Path(cfg.train.output_dir)
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg, callbacks=[SignalAtStep1()])
    assert e.value.step == 1 and e.value.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM" in str(e.value) and "--resume" in str(e.value)
    ckpt = run / "checkpoints" / "checkpoint-1"
    assert e.value.checkpoint == str(ckpt) and (ckpt / COMPLETE).exists()
    assert not (run / "final").exists() and not (run / "summary.json").exists()
    # item 4: nothing seektune keeps in a checkpoint is a pickle (optimizer, scheduler, RNG as safetensors/JSON)
    assert _no_pickles(ckpt) == [] and (ckpt / "optimizer.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after training
    s = train(cfg, resume=True).summary
    assert s["steps"] == 2 and Path(s["resumed_from"]).name == "checkpoint-1"
    assert _steps(run) == [1, 2] and (run / "final" / COMPLETE).exists()


def test_ctrl_c_twice_acts_at_once():
    """The first SIGINT only sets the flag; a second one (an impatient user) interrupts straight away."""
    from seektune.engine.interrupt import StopSignals

    # Python's own Ctrl-C handler, as the CLI has it (an earlier test or library may have replaced it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested and stop.signum == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------
# SIGKILL while a checkpoint or final/ is being written (a real SIGKILL, in a subprocess)
# ---------------------------------------------------------------------------------------------

WRITER = r'''
import os, signal, sys, shutil
from pathlib import Path
import torch
from safetensors.torch import save_file
from seektune.engine import checkpoint
from seektune.engine.run import RunFolder

folder, mode = Path(sys.argv[1]), sys.argv[2]
client = checkpoint.CheckpointClient(folder / "checkpoints", keep=1)

def whole(d):
    save_file({"w": torch.arange(1000.0)}, str(d / "model.safetensors"))
    (d / "state.json").write_text('{"step": 1}')

def killed_mid_file(d):
    d.mkdir(exist_ok=True)  # (HF's save_model makes final.partial itself)
    save_file({"w": torch.ones(200_000)}, str(d / "model.safetensors"))
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(4096)  # the bytes a kill would have left
    os.kill(os.getpid(), signal.SIGKILL)

client.save(1, whole)
if mode == "checkpoint":
    client.save(2, killed_mid_file)
elif mode == "rotation":  # killed while rotation deletes checkpoint-1, after checkpoint-2 is in place
    real = shutil.rmtree
    def rmtree(p, *a, **k):
        if Path(p).name == "checkpoint-1":
            next(Path(p).glob("*.safetensors")).unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(p, *a, **k)
    checkpoint.shutil.rmtree = rmtree
    client.save(2, whole)
elif mode == "final":
    (folder / "config.yaml").write_text("train: {}\n")
    RunFolder(folder).save_final(killed_mid_file)
'''


def _killed_writer(tmp_path, mode: str) -> Path:
    r = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    return tmp_path


@pytest.mark.parametrize("mode", ["checkpoint", "rotation"])
def test_sigkill_mid_checkpoint_write_leaves_a_latest_that_loads(tmp_path, mode):
    from safetensors.torch import load_file

    folder = _killed_writer(tmp_path, mode) / "checkpoints"
    client = CheckpointClient(folder, keep=1)
    latest = Path(client.latest())
    assert latest.name == {"checkpoint": "checkpoint-1", "rotation": "checkpoint-2"}[mode]
    for f in latest.iterdir():  # every file of the latest checkpoint loads
        load_file(str(f)) if f.suffix == ".safetensors" else json.loads(f.read_text())
    if mode == "checkpoint":
        assert (folder / ".staging" / "checkpoint-2").exists()  # the torn copy stayed out of sight...
        client.save(2, lambda d: (d / "state.json").write_text("{}"))
        assert not (folder / ".staging").exists()                 # ...and the next save clears it
    else:
        assert [p.name for _, p in client.complete()] == ["checkpoint-2"]  # half-deleted 1 lost its marker first


def test_sigkill_mid_final_write_is_never_reported_as_done(tmp_path):
    from seektune.engine.artifacts import ArtifactError, resolve

    run = _killed_writer(tmp_path, "final")
    assert not (run / "final").exists() and not (run / "final.partial" / COMPLETE).exists()
    with pytest.raises(ArtifactError, match="has not finished"):
        resolve(run)
    fake = run / "final"  # a final/ without its completion marker (copied by hand, or older tools)
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="incomplete"):
        resolve(fake)


# ---------------------------------------------------------------------------------------------
# A full disk: a clear error, the previous checkpoint kept, no half final/
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_tmpfs_keeps_the_previous_checkpoint_and_writes_no_final(small_tmpfs):
    import torch
    from safetensors.torch import load_file, save_file

    from seektune.engine.run import RunFolder

    client = CheckpointClient(small_tmpfs / "checkpoints", keep=2)
    client.save(1, lambda d: save_file({"w": torch.zeros(50_000)}, str(d / "model.safetensors")))  # 200 kB
    with pytest.raises(CheckpointError, match="no space left on device.*checkpoint-1 is kept"):
        client.save(2, lambda d: save_file({"w": torch.zeros(500_000)}, str(d / "model.safetensors")))  # 2 MB
    assert [p.name for _, p in client.complete()] == ["checkpoint-1"] and not client.staging.exists()
    assert load_file(str(small_tmpfs / "checkpoints" / "checkpoint-1" / "model.safetensors"))["w"].numel() == 50_000
    with pytest.raises(CheckpointError, match="final/ was not written, the checkpoint .*checkpoint-1 is kept"):
        RunFolder(small_tmpfs).save_final(lambda d: (d.mkdir(), save_file({"w": torch.zeros(500_000)},
                                                                          str(d / "model.safetensors"))))
    assert not (small_tmpfs / "final").exists() and not (small_tmpfs / "final.partial").exists()


def test_full_disk_in_training_keeps_the_last_checkpoint_then_resumes(tmp_path, alpaca_file, monkeypatch):
    """The trainer's own save path: ENOSPC at checkpoint-2, then at final/, then room again."""
    from seektune.engine import run as run_mod
    from seektune.engine import state_files
    from seektune.engine.artifacts import ArtifactError, resolve

    real_save = state_files.save_optimizer
    calls = []

    def save_optimizer(opt, folder):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "optimizer.safetensors"))
        return real_save(opt, folder)

    monkeypatch.setattr(state_files, "save_optimizer", save_optimizer)
    cfg = _cfg(tmp_path, alpaca_file, train__max_steps=2, train__save_steps=1)
    run = Path(cfg.train.output_dir)
    with pytest.raises(CheckpointError, match=r"checkpoint-2: no space left on device; the previous checkpoint "
                                              r".*checkpoint-1 is kept"):
        train(cfg)
    client = CheckpointClient(run / "checkpoints")
    assert [p.name for _, p in client.complete()] == ["checkpoint-1"] and not client.staging.exists()
    assert not (run / "final").exists()

    real_final = run_mod.RunFolder.save_final

    def full_at_final(self, save):
        def half(d):
            save(d)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_final(self, half)

    monkeypatch.setattr(run_mod.RunFolder, "save_final", full_at_final)
    with pytest.raises(CheckpointError, match="final/ was not written"):
        train(cfg, resume=True)
    assert not (run / "final").exists() and not (run / "final.partial").exists()
    assert client.latest().endswith("checkpoint-2")
    with pytest.raises(ArtifactError, match="has not finished"):
        resolve(run)

    monkeypatch.setattr(run_mod.RunFolder, "save_final", real_final)
    s = train(cfg, resume=True).summary  # room again: resumed at the last step, it trains none, writes final/
    assert s["steps"] == 2 and resolve(run).kind == "adapter" and _steps(run) == [1, 2]


# ---------------------------------------------------------------------------------------------
# A damaged tokenised-data cache is detected and rebuilt
# ---------------------------------------------------------------------------------------------

def test_damaged_tokenized_cache_is_detected_and_rebuilt(tmp_path, alpaca_file, monkeypatch):
    from seektune.data.sft import build_sft_data
    from seektune.data.templates import get_template
    from seektune.models.loader import load_tokenizer

    monkeypatch.setenv("SEEKTUNE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(tmp_path, alpaca_file, data__cache=True, data__max_length=48)
    tok = load_tokenizer(cfg.model)
    template = get_template("auto", tok)
    logs: list[str] = []

    def build():
        return build_sft_data(cfg.data, tok, template, seed=0, log=logs.append)

    first = build()
    assert first.stats["cache"] == "miss"
    (entry,) = (tmp_path / "cache" / "tokenized").glob("*.json")
    good = entry.read_bytes()
    head, body = good.split(b"\n", 1)
    i = body.index(b"1")  # one digit changed, same length: only the checksum can tell
    damages = {"header says": good[: len(good) // 2],
               "checksum mismatch": head + b"\n" + body[:i] + b"2" + body[i + 1:],
               "not a seektune cache entry": b'{"train": [], "eval": [], "stats": {}}',
               "unreadable header": b"\x00\xff garbage"}
    for why, raw in damages.items():
        entry.write_bytes(raw)
        logs.clear()
        again = build()
        assert again.stats["cache"] == "miss" and any("damaged" in m and why in m for m in logs), (why, logs)
        assert again.train == first.train and again.eval == first.eval, why
        assert entry.read_bytes() == good, why  # rewritten whole
    assert build().stats["cache"].startswith("hit")


# ---------------------------------------------------------------------------------------------
# Long forms (SEEKTUNE_LONG=1, `make test-long`): the real command line, real signals from outside
# ---------------------------------------------------------------------------------------------

LONG = os.environ.get("SEEKTUNE_LONG") == "1"


def _yaml(tmp_path, data, steps: int, save_steps) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{name_or_path: tiny-qwen2}}\nadapter: {{method: lora, r: 4, alpha: 8, dropout: 0}}\n"
                   f"data: {{train: {data}, max_length: 48, eval_ratio: 0, cache: false}}\n"
                   f"train: {{max_steps: {steps}, batch_size: 2, lr: 0.01, logging_steps: 1, save_steps: {save_steps}, "
                   f"seed: 0, num_threads: 1, output_dir: {tmp_path / 'run'}}}\n"
                   "eval: {before_after: false, report: false}\n")
    return cfg


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "seektune", "train", *map(str, args), "--no-progress"]


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long form only (SEEKTUNE_LONG=1); the short form is test_sigterm_...")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_mid_run_exits_cleanly_then_resumes(tmp_path, alpaca_file, sig):
    import time

    cfg = _yaml(tmp_path, alpaca_file, steps=12, save_steps="null")
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = subprocess.Popen(_cli(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and f"{signal.Signals(sig).name}: stopped after step" in err and "--resume" in err
    ckpts = CheckpointClient(tmp_path / "run" / "checkpoints").complete()
    assert len(ckpts) == 1 and not (tmp_path / "run" / "final").exists()
    r = subprocess.run(_cli(cfg, "--resume"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr[-3000:]
    assert _steps(tmp_path / "run") == list(range(1, 13))


# ---------------------------------------------------------------------------------------------
# Signals under --nproc: the launcher passes each signal to torchrun once and waits for the workers
# ---------------------------------------------------------------------------------------------

STAND_IN_TORCHRUN = r"""
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
open(sys.argv[1], "w").write(f"{os.getsid(0)}")
while not got:
    time.sleep(0.01)
time.sleep(0.5)  # the workers finishing their step and checkpoint: a second copy would cut this short
open(sys.argv[1], "a").write(f" {len(got)}")
sys.exit(128 + got[0])
"""

LAUNCHER = r"""
import sys
from seektune.engine.launch import launch_torchrun
done = launch_torchrun([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(done.returncode, done.signum)
"""


def test_launcher_forwards_a_signal_to_torchrun_once_and_waits(tmp_path):
    """The UI's Stop, a scheduler's SIGTERM or Ctrl-C reach torchrun (hence the workers) exactly once."""
    import time

    mark = tmp_path / "child"
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, STAND_IN_TORCHRUN, str(mark)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own group: killpg = a terminal's Ctrl-C
    deadline = time.time() + 300  # importing torch on a loaded machine
    while not mark.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert mark.exists(), "the stand-in torchrun never started"
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as a terminal or a scheduler signals it
    out, _ = proc.communicate(timeout=60)
    sid, count = mark.read_text().split()
    assert int(sid) != proc.pid, "torchrun runs in a session of its own (the launcher leads its own)"
    assert count == "1", "torchrun got the signal once (not also straight from the group)"
    assert out.split() == [str(128 + signal.SIGTERM), str(int(signal.SIGTERM))]


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long form only (SEEKTUNE_LONG=1); the short form is test_launcher_forwards_...")
def test_sigterm_under_nproc_2_checkpoints_every_rank_and_leaves_no_worker(tmp_path, alpaca_file):
    import time

    cfg = _yaml(tmp_path, alpaca_file, steps=400, save_steps="null")
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = subprocess.Popen(_cli(cfg, "--nproc", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to seektune only, as the UI's Stop does
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM: stopped after step" in err and "--resume" in err
    ckpts = CheckpointClient(tmp_path / "run" / "checkpoints").complete()
    assert len(ckpts) == 1 and not (tmp_path / "run" / "final").exists()
    step = ckpts[0][0]
    assert 2 <= step < 400 and _steps(tmp_path / "run")[-1] == step, "stopped at the step both ranks agreed"
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "run" / "launch_config.yaml")], capture_output=True, text=True)
    assert left.stdout == "", f"workers left running: {left.stdout}"


KILL_IN_RNG_WRITE = r'''
import os, signal, sys
from seektune.engine import state_files
from seektune.cli import app
real, calls = state_files.save_rng, []
def save_rng(folder, rank=None):
    calls.append(folder)
    if len(calls) == 2:  # inside checkpoint-4's write: model and optimizer are on disk, the RNG state is not
        (folder / "rng_state.safetensors").write_bytes(b"\x08\x00")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(folder, rank)
state_files.save_rng = save_rng
app(sys.argv[1:])
'''


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long form only (SEEKTUNE_LONG=1); the short form is test_sigkill_mid_...")
def test_sigkill_inside_a_trainer_checkpoint_write_then_resume(tmp_path, alpaca_file):
    cfg = _yaml(tmp_path, alpaca_file, steps=6, save_steps=2)
    r = subprocess.run([sys.executable, "-c", KILL_IN_RNG_WRITE, "train", str(cfg), "--no-progress"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    assert Path(CheckpointClient(folder).latest()).name == "checkpoint-2"
    assert (folder / ".staging" / "checkpoint-4").exists() and not (folder / "checkpoint-4").exists()
    r = subprocess.run(_cli(cfg, "--resume"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "checkpoint-2" in r.stderr, r.stderr[-3000:]
    assert _steps(tmp_path / "run") == list(range(1, 7)) and (tmp_path / "run" / "final" / COMPLETE).exists()
