"""The benchmark results of a run or an eval folder: benchmarks.json (scores with intervals, the
before/after comparison) and benchmarks_questions.jsonl (every question's outcome, per phase).

The comparison pairs the two phases question by question, so its interval is that of the change
itself; a loss whose interval lies below zero is flagged as forgetting (not a fixed percentage).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...data.io import write_jsonl
from ..intervals import paired_difference, verdict

RESULTS_FILE = "benchmarks.json"
QUESTIONS_FILE = "benchmarks_questions.jsonl"
PHASES = ("before", "after")


def compare(before: dict, after: dict, rows: list[dict]) -> list[dict]:
    """Per bench and metric: before, after, paired change with its 95% interval, verdict, flag."""
    out = []
    for name, a in after.items():
        b = before.get(name)
        if b is None:
            continue
        for metric in a["metrics"]:
            pb = {r["id"]: r[metric] for r in rows if r["phase"] == "before" and r["bench"] == name and metric in r}
            pa = {r["id"]: r[metric] for r in rows if r["phase"] == "after" and r["bench"] == name and metric in r}
            ids = sorted(set(pb) & set(pa))
            d = paired_difference([pb[i] for i in ids], [pa[i] for i in ids])
            v = verdict(d["low"], d["high"])
            out.append({"bench": name, "metric": metric, "before": b["metrics"][metric], "after": a["metrics"][metric],
                        "change": d, "verdict": v, "forgetting": v == "loss"})
    return out


class BenchmarkResults:
    """Read, extend and save one folder's benchmark results (a resumed run keeps its 'before')."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.phases: dict[str, dict] = {}
        self.rows: list[dict] = []
        self.meta: dict = {}

    @classmethod
    def load(cls, folder: str | Path) -> "BenchmarkResults":
        r = cls(folder)
        p = r.folder / RESULTS_FILE
        if p.exists():
            data = json.loads(p.read_text(encoding="utf-8"))
            r.phases = {k: v for k, v in data.get("phases", {}).items() if k in PHASES}
            r.meta = data.get("meta", {})
        q = r.folder / QUESTIONS_FILE
        if q.exists():
            r.rows = [json.loads(x) for x in q.read_text(encoding="utf-8").splitlines() if x.strip()]
        return r

    def has(self, phase: str, names: list[str]) -> bool:
        return all(n in self.phases.get(phase, {}) for n in names)

    def add(self, phase: str, results: dict, rows: list[dict], model: str = "") -> None:
        self.phases.setdefault(phase, {}).update(results)
        names = set(results)
        self.rows = [r for r in self.rows if not (r["phase"] == phase and r["bench"] in names)]
        self.rows += [{"phase": phase, **r} for r in rows]
        if model:
            self.meta.setdefault("models", {})[phase] = model
        self.save()

    def comparison(self) -> list[dict]:
        if not all(p in self.phases for p in PHASES):
            return []
        return compare(self.phases["before"], self.phases["after"], self.rows)

    def payload(self) -> dict:
        return {"meta": self.meta, "phases": self.phases, "comparison": self.comparison()}

    def save(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        p = self.folder / RESULTS_FILE
        p.write_text(json.dumps(self.payload(), indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        write_jsonl(self.folder / QUESTIONS_FILE, self.rows)
        return p


def load_results(folder: str | Path) -> dict | None:
    """benchmarks.json of a folder (for the report), None when it has none."""
    p = Path(folder) / RESULTS_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None
