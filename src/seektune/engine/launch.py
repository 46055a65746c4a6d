"""Launching on several processes: the torchrun command, and a launcher that passes signals on.

Kept apart from engine/distributed.py (which needs torch) so that the CLI's launcher process stays
light: it only starts torchrun and waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import NamedTuple

from ..config import ConfigError

# How long torchrun lets the workers finish their step and write the checkpoint after a signal before
# it SIGKILLs them. torchrun's own default, 30 s, is shorter than saving a 7B model's optimizer state.
SHUTDOWN_GRACE_S = 600


def torchrun_command(config: str, overrides: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str | None = None, master_port: int = 29500, resume: bool = False,
                     overwrite: bool = False) -> list[str]:
    """The torchrun command that runs `seektune train` on every process of this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        if not master_addr:
            raise ConfigError("--nnodes > 1 needs --master-addr (the address of node 0)")
        cmd += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                f"--master_port={master_port}"]
    else:
        cmd += ["--standalone"]  # a free rendezvous port on this machine
    if "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in os.environ:  # the user's own setting wins
        cmd.append(f"--shutdown-timeout={SHUTDOWN_GRACE_S}")
    cmd += ["-m", "seektune", "train", config, "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


class Launched(NamedTuple):
    """What became of a torchrun launch: its exit code, and the signal that stopped it (None if none)."""

    returncode: int
    signum: int | None


def launch_torchrun(cmd: list[str]) -> Launched:
    """Run torchrun in its own session and pass it each SIGTERM/SIGINT this process gets, once.

    Why: a plain subprocess.call kills torchrun with SIGKILL when Ctrl-C arrives, and dies at once on
    SIGTERM (a scheduler, the UI's Stop); either way the workers, which torchrun starts in sessions of
    their own, never hear of it and train on, orphaned. In its own session torchrun gets exactly the
    signals forwarded here (not a second copy from the terminal, which would cut the workers'
    checkpoint short); it passes them to every worker, each finishes its step and saves a checkpoint
    (engine/interrupt.py), and this process waits for all of that to end.
    """
    proc = subprocess.Popen(cmd, start_new_session=True)
    got: list[int] = []

    def forward(signum, frame):
        got.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()  # a handled signal does not interrupt the wait (PEP 475)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return Launched(rc, got[0] if got else None)
