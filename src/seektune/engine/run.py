"""The run-folder contract every stage follows.

    config.yaml       the resolved configuration: re-running it reproduces the run
    metrics.jsonl     one JSON object per logged step (never a step twice, resume included)
    tensorboard/      the same scalars for TensorBoard
    checkpoints/      complete checkpoints only (engine/checkpoint.py); `--resume` continues the newest
    final/            the trained adapter or model + tokenizer; exists only once it is whole
    rejects.jsonl     records that could not be used, with file:line and the reason
    unused_eval.jsonl eval-file records beyond data.max_eval_samples (counted, never silent)
    summary.json      one shape for every stage (engine/summary.py)
    report.md/.html   built from the files above (seektune report RUN rebuilds it)

A fresh run refuses a folder that holds another run unless told to overwrite it, so a re-run never
silently mixes its checkpoints with an older run's, and `--resume` continues exactly where the
newest complete checkpoint left off.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..data.io import write_jsonl
from ..utils.console import log, warn
from ..utils.dist import is_main
from ..utils.safe_files import check_folder
from .checkpoint import COMPLETE, CheckpointClient, CheckpointError, as_os_error, fsync_tree, step_of, write_errors

# what a run writes; a fresh start with --overwrite clears these and nothing else (data/ from a
# data.pipeline of this very launch stays)
RUN_FILES = ("metrics.jsonl", "tensorboard", "checkpoints", "final", "final.partial", "final.old", "summary.json", "eval.json",
             "report.md", "report.html", "report_files", "rejects.jsonl", "unused_eval.jsonl", "eval", "labels.json",
             "eval_metrics.json", "eval_predictions.jsonl", "confusion_matrix.png", "eval_tokens.json",
             "replay_buffer.jsonl", "ewc_fisher.safetensors", "reward_curve.png", "samples.jsonl", "before.json")


def _metrics_lines(checkpoint: str) -> int | None:
    """The metrics.jsonl line count a checkpoint's completion marker recorded (None: not recorded)."""
    try:
        n = json.loads((Path(checkpoint) / COMPLETE).read_text(encoding="utf-8")).get("metrics_lines")
    except (OSError, ValueError):
        return None
    return n if isinstance(n, int) else None


@dataclass
class RunFolder:
    path: Path
    main: bool = True
    resume_from: str | None = None  # the checkpoint this launch continues, None for a fresh start
    keep_checkpoints: int = 2
    notes: list[str] = field(default_factory=list)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints(self) -> CheckpointClient:
        return CheckpointClient(self.path / "checkpoints", self.keep_checkpoints, self.main)

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def resumed_step(self) -> int:
        return step_of(self.resume_from) if self.resume_from else 0

    # -- start ---------------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg, resume: bool = False, overwrite: bool = False) -> "RunFolder":
        """Open the run folder for a fresh start or a resume; write config.yaml."""
        run = cls(Path(cfg.train.output_dir), is_main(), keep_checkpoints=cfg.train.keep_checkpoints)
        resume = resume or bool(cfg.train.resume)
        run.path.mkdir(parents=True, exist_ok=True)
        if resume:
            run.resume_from = run.checkpoints.latest(log_warning=warn)
            if run.resume_from:
                check_folder(run.resume_from, "checkpoint")  # before HF or peft unpickle anything in it
                log(f"resuming from {run.resume_from}")
                if run.main:
                    run.truncate_metrics(run.resumed_step, _metrics_lines(run.resume_from))
            else:
                log("no complete checkpoint found; starting from the beginning")
                if run.main:
                    run.truncate_metrics(0, keep_lines=0)  # everything is logged again, "before" included
        elif run.holds_a_run():
            if not overwrite:
                raise ConfigError(f"{run.path} holds another run ({run.describe_contents()}): resume it with --resume, "
                                  "start over with --overwrite, or set train.output_dir to a new folder")
            if run.main:
                run.clear()
        if run.main:
            (run.path / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        return run

    def holds_a_run(self) -> bool:
        return any((self.path / n).exists() for n in ("final", "checkpoints", "summary.json", "metrics.jsonl"))

    def describe_contents(self) -> str:
        found = [n for n in ("final", "summary.json", "metrics.jsonl") if (self.path / n).exists()]
        n_ckpt = len(self.checkpoints.complete()) if (self.path / "checkpoints").exists() else 0
        if n_ckpt:
            found.append(f"{n_ckpt} checkpoint(s)")
        return ", ".join(found)

    def clear(self) -> None:
        for name in RUN_FILES:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        log(f"--overwrite: cleared the previous run in {self.path}")

    def truncate_metrics(self, last_step: int, keep_lines: int | None = None) -> None:
        """On resume, drop records logged after the checkpoint: the resumed run logs those steps again.

        `keep_lines`: how many lines the file held when the checkpoint was taken (its completion marker
        says). That also drops records of the checkpoint's own step written after it (the end-of-training
        record and the final evaluation, when the checkpoint is the last step), which the step alone cannot
        tell apart. Without it (older checkpoints): every record up to `last_step`."""
        if not self.metrics.exists():
            return
        keep = []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        if keep_lines is not None:
            lines = lines[:keep_lines]
        for line in lines:
            try:
                if line.strip() and json.loads(line).get("step", 0) <= last_step:
                    keep.append(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
        self.metrics.write_text("".join(x + "\n" for x in keep), encoding="utf-8")

    # -- writing -------------------------------------------------------------------------------
    def write_rejects(self, rejects: list[dict], unused: list[dict] | None = None) -> None:
        if not self.main:
            return
        write_jsonl(self.path / "rejects.jsonl", rejects)
        if unused:
            write_jsonl(self.path / "unused_eval.jsonl", unused)

    def save_final(self, save) -> Path:
        """`save(folder)` writes the model and tokenizer; final/ appears only once complete.

        The saving function runs on every process (FSDP / ZeRO-3 gather their shards inside it); only
        the main process renames. An older final/ is renamed aside first, so a kill at any moment leaves
        either a whole final/ or none (never one half deleted or half written); a failed write (a full
        disk) is a CheckpointError that removes the partial copy and keeps the checkpoints."""
        partial, old = self.path / "final.partial", self.path / "final.old"
        try:
            if self.main:
                shutil.rmtree(partial, ignore_errors=True)
            save(partial)
            if self.main:
                (partial / "training_args.bin").unlink(missing_ok=True)
                fsync_tree(partial)
                (partial / COMPLETE).write_text(json.dumps({"final": True}))
                shutil.rmtree(old, ignore_errors=True)
                if self.final.exists():
                    self.final.rename(old)
                partial.rename(self.final)
                shutil.rmtree(old, ignore_errors=True)
        except write_errors() as e:
            e = as_os_error(e)
            if self.main:
                shutil.rmtree(partial, ignore_errors=True)
            kept = self.checkpoints.complete()
            why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise CheckpointError(e.errno, f"could not write {self.final}: {why}; final/ was not written"
                                  + (f", the checkpoint {kept[-1][1]} is kept" if kept else "")
                                  + ". Free space, then run again with --resume.") from None
        return self.final

    def before(self, key: str, measure):
        """A "before training" measurement, made once per run: a resumed launch reads the first launch's
        value (the base model is gone by then), so before/after always compare the same base."""
        p = self.path / "before.json"
        saved = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
        if self.resume_from and key in saved:
            return saved[key]
        value = measure()
        if self.main:
            saved[key] = value
            p.write_text(json.dumps(saved, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
        return value

    def write_json(self, name: str, obj) -> Path:
        p = self.path / name
        if self.main:
            p.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        return p
