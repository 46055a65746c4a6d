"""What a run folder says, for the Runs page: status, metrics, log tail, warnings, report.

Everything is read from the files a run writes (engine/run.py's contract) plus the UI's own job files
(jobs.py), so runs started from the CLI show up too, and a UI restart loses nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..eval.report import read_metrics
from . import jobs
from .workspace import Workspace

_RUN_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl", jobs.JOB)
_ERROR_LINE = re.compile(r"^(error:|\w*Error\b|Traceback)", re.M)


def is_run_folder(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in _RUN_MARKERS)


def list_runs(ws: Workspace) -> list[str]:
    """Run folders under runs/ (two levels: runs/NAME and runs/GROUP/NAME), newest first."""
    if not ws.runs_dir.is_dir():
        return []
    found = [p for p in ws.runs_dir.glob("*") if is_run_folder(p)]
    found += [p for p in ws.runs_dir.glob("*/*") if is_run_folder(p) and p.parent not in found]
    found.sort(key=lambda p: max((p / m).stat().st_mtime for m in _RUN_MARKERS if (p / m).exists()), reverse=True)
    return [ws.rel(p) for p in found]


def _json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_tail(run_dir: Path, lines: int = 40) -> str:
    p = run_dir / jobs.LOG
    if not p.exists():
        return "(no UI log: this run was not started from the UI)"
    text = p.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:])


def error_of(run_dir: Path) -> str | None:
    """The error a failed run printed: the CLI's `error:` message, or the end of a traceback."""
    p = run_dir / jobs.LOG
    if not p.exists():
        return None
    text = p.read_text(encoding="utf-8", errors="replace")
    starts = [m.start() for m in _ERROR_LINE.finditer(text)]
    return text[starts[-1]:].strip()[:2000] if starts else None


@dataclass
class RunStatus:
    run: str
    state: str                # running | done | failed | stopped | incomplete
    detail: str = ""
    summary: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.run}: {self.state}" + (f" ({self.detail})" if self.detail else "")


def status(ws: Workspace, run_dir: Path) -> RunStatus:
    jobs.reap()
    summary = _json(run_dir / "summary.json")
    warnings = list((summary or {}).get("warnings") or [])
    rel = ws.rel(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = max((r.get("step", 0) for r in rows), default=0)
    if jobs.is_running(run_dir):
        return RunStatus(rel, "running", f"step {steps}", summary, warnings)
    if summary is not None and (run_dir / "summary.json").stat().st_mtime >= _launch_time(run_dir):
        return RunStatus(rel, str(summary.get("status", "done")),
                         f"{summary.get('steps')} steps, train loss {summary.get('train_loss')}", summary, warnings)
    if jobs.was_stopped(run_dir):
        return RunStatus(rel, "stopped", f"at step {steps}; Resume continues from the newest checkpoint", None, warnings)
    code = jobs.exit_code(run_dir)
    ended_badly = code != 0 if code is not None else (run_dir / jobs.JOB).exists()  # no code: killed with the UI host
    if ended_badly:
        return RunStatus(rel, "failed", error_of(run_dir) or f"exit code {code}", None, warnings)
    return RunStatus(rel, "incomplete", f"no summary.json yet (step {steps})", None, warnings)


def _launch_time(run_dir: Path) -> float:
    job = _json(run_dir / jobs.JOB)
    return float(job.get("started", 0)) if job else 0.0


def run_config_text(run_dir: Path) -> str:
    for name in ("config.yaml", jobs.LAUNCH_YAML):
        p = run_dir / name
        if p.exists():
            return p.read_text(encoding="utf-8")
    return ""


def run_config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load(run_config_text(run_dir)) or {}
    except yaml.YAMLError:
        return {}


def metric_keys(rows: list[dict]) -> list[str]:
    """Numeric series in metrics.jsonl, most useful first."""
    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.setdefault(k, None)
    first = ["loss", "eval_loss", "lr", "grad_norm"]
    return [k for k in first if k in keys] + sorted(k for k in keys if k not in first)


def report_html(run_dir: Path) -> str | None:
    """The run's self-contained report.html (plots inlined), None until the run wrote one."""
    p = run_dir / "report.html"
    return p.read_text(encoding="utf-8") if p.exists() else None
