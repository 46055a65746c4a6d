"""A run started from the UI is an ordinary `seektune train` subprocess writing an ordinary run folder.

It runs in its own session (a UI restart or Ctrl-C does not stop it) with the workspace as working
directory, so relative paths mean what the YAML preview shows. Beside the run's own files the UI keeps
three of its own in the run folder: the YAML it launched (ui_launch.yaml), the process's output
(ui.log) and ui_job.json (pid, command, start time). A small shell wrapper writes the exit code to
ui_exit_code when the process ends, so any later UI (or a person) can tell a crash from a stop.
Stop and Resume are one helper (`control`) so the Train and Runs pages do and say the same thing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .problems import problem_md
from .workspace import Workspace, WorkspaceError

LAUNCH_YAML = "ui_launch.yaml"
LOG = "ui.log"
JOB = "ui_job.json"
EXIT_CODE = "ui_exit_code"
TRAIN = [sys.executable, "-m", "seektune", "train"]  # the tests put a stand-in trainer here
# "$@" is the train command; its exit code lands in ui_exit_code whatever happens to the UI. The trap
# keeps the shell alive through Stop's SIGTERM (without it the shell dies at once, writes no exit code,
# and the run looks ended while the trainer is still writing its checkpoint); the trainer gets the
# default SIGTERM back, so it stops as it would from the CLI
_WRAPPER = 'trap : TERM; cd "$1" && shift && "$@"; echo $? > "$0"'
STOP_WAIT_S = 20.0


def _job(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / JOB).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_running(run_dir: Path) -> bool:
    """The run's UI-launched process is alive (same pid and start time: a reused pid does not count)."""
    job = _job(run_dir)
    if not job or (run_dir / EXIT_CODE).exists():
        return False
    try:
        proc = psutil.Process(job["pid"])
        return abs(proc.create_time() - job["created"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError):
        return False


def exit_code(run_dir: Path) -> int | None:
    try:
        return int((run_dir / EXIT_CODE).read_text().strip())
    except (OSError, ValueError):
        return None


def start(ws: Workspace, run_dir: Path, yaml_text: str, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Launch `seektune train` on `yaml_text` (already validated) into run_dir; returns the command."""
    run_dir = ws.path(run_dir, "train.output_dir")
    if is_running(run_dir):
        raise WorkspaceError(f"train.output_dir: {ws.rel(run_dir)} has a run in progress (stop it first)")
    run_dir.mkdir(parents=True, exist_ok=True)
    launch = run_dir / LAUNCH_YAML
    launch.write_text(yaml_text, encoding="utf-8")
    (run_dir / EXIT_CODE).unlink(missing_ok=True)  # from an earlier launch
    cmd = [*TRAIN, ws.rel(launch), "--no-progress"]
    cmd += ["--resume"] if resume else []
    cmd += ["--overwrite"] if overwrite and not resume else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / LOG, "a" if resume else "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(["sh", "-c", _WRAPPER, str(run_dir / EXIT_CODE), str(ws.root), *cmd],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    created = psutil.Process(proc.pid).create_time()
    (run_dir / JOB).write_text(json.dumps({"pid": proc.pid, "created": created, "cmd": cmd,
                                           "started": time.time(), "stopped": False}), encoding="utf-8")
    _CHILDREN[str(run_dir)] = proc  # keeps the zombie reaped while this UI lives
    return cmd


def stop(run_dir: Path) -> bool:
    """SIGTERM the run's process group and wait for it to end (the trainer finishes its step and writes a
    checkpoint, so Resume continues from it); SIGKILL after STOP_WAIT_S. Also for a run an earlier UI started."""
    job = _job(run_dir)
    if not job or not is_running(run_dir):
        return False
    try:
        proc = _CHILDREN.get(str(run_dir)) or psutil.Process(job["pid"])
        os.killpg(job["pid"], signal.SIGTERM)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
    job["stopped"] = True
    (run_dir / JOB).write_text(json.dumps(job), encoding="utf-8")
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        os.killpg(job["pid"], signal.SIGKILL)
    return True


def was_stopped(run_dir: Path) -> bool:
    return bool((_job(run_dir) or {}).get("stopped"))


def reap() -> None:
    """Collect finished children of this UI (so their pids do not linger as zombies)."""
    for key, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[key]


_CHILDREN: dict[str, subprocess.Popen] = {}


def resume_run(ws: Workspace, run_dir: Path) -> list[str]:
    """Relaunch a run with --resume on the YAML it was started with (the UI's, else its config.yaml)."""
    for name in (LAUNCH_YAML, "config.yaml"):
        p = run_dir / name
        if p.exists():
            return start(ws, run_dir, p.read_text(encoding="utf-8"), resume=True)
    raise WorkspaceError(f"{ws.rel(run_dir)}: no config.yaml to resume from")


def control(ws: Workspace, target: str, resume: bool, what: str = "run folder") -> str:
    """Stop or Resume the run in `target` (the Runs page's pick, the Train form's output_dir): the line to show."""
    try:
        run_dir = ws.path(target or "", what)
        rel = ws.rel(run_dir)
        if resume:
            resume_run(ws, run_dir)
            return f"resuming `{rel}` from its newest checkpoint"
        return f"stopped `{rel}`" if stop(run_dir) else f"`{rel}`: no run in progress started from a UI"
    except WorkspaceError as e:
        return problem_md(str(e))
