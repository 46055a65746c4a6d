"""SIGTERM / Ctrl-C during training: finish the step, write a checkpoint, stop, exit cleanly.

A cluster scheduler (SIGTERM before SIGKILL) or a person at the keyboard (SIGINT) should cost at most
the step in flight, not the run: the first signal only sets a flag; the training loop checks it after
each optimizer step, saves a normal (staged, complete) checkpoint and raises TrainingInterrupted,
which the CLI turns into a one-line message and exit code 128 + signal number. A second signal while
the checkpoint is being written restores the default handler and acts at once (an impatient Ctrl-C
still works). Under torchrun every rank agrees on the step through one all-reduce of the flag.
"""

from __future__ import annotations

import signal
import threading

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (`checkpoint` None when none could be)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint} is complete" if checkpoint else "no checkpoint was written"
        super().__init__(f"{name}: stopped after step {step}; {where}. Continue with "
                         "`seektune train CONFIG --resume`.")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: while open, SIGTERM/SIGINT set `signum` instead of killing the process."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: default behaviour, now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def agreed(self, device=None) -> bool:
        """Whether any process asked to stop (one all-reduce under torch.distributed, else the flag)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        import torch

        flag = torch.tensor([self.signum or 0], device=device or "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not self.requested and int(flag):
            self.signum = int(flag)
        return bool(int(flag))


class StopOnSignal(TrainerCallback):
    """HF-Trainer side: after the optimizer step a signal arrived in, save and stop."""

    def __init__(self, signals: StopSignals):
        self.signals = signals

    def on_step_end(self, args, state, control, **kw):
        if self.signals.agreed(args.device if args.world_size > 1 else None):
            control.should_save = True
            control.should_training_stop = True
        return control
