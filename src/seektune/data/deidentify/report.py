"""The report of a de-identification run: counts per type, records scanned/changed, speed, and a
review sample (the first N changed records with every span before and after), so a person can check
what was replaced before the data goes to training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def _stem(out: Path) -> str:
    return Path(out.stem).stem if out.suffix == ".gz" else out.stem


def report_path_for(out) -> Path:
    """`data/train.deid.jsonl` -> `data/train.deid.report.json`."""
    return Path(out).with_name(f"{_stem(Path(out))}.report.json")


def sample_path_for(out) -> Path:
    """`data/train.deid.jsonl` -> `data/train.deid.sample.jsonl`."""
    return Path(out).with_name(f"{_stem(Path(out))}.sample.jsonl")


class Report:
    """Accumulates counts while records stream by; `sample` keeps the first `sample_size` changed ones."""

    def __init__(self, sample_size: int = 20):
        self.sample_size = sample_size
        self.by_type: Counter = Counter()
        self.records_with: Counter = Counter()
        self.stats: Counter = Counter()
        self.sample: list[dict] = []

    def add(self, where: str, fields: list[tuple[str, str, list]]) -> None:
        """One record: (field path, original string, spans) for each string it had replaced."""
        self.stats["scanned"] += 1
        if not fields:
            return
        self.stats["changed"] += 1
        types = set()
        for _, _, spans in fields:
            for s in spans:
                self.by_type[s.type] += 1
                types.add(s.type)
        for t in types:
            self.records_with[t] += 1
        if len(self.sample) < self.sample_size:
            self.sample.append({"where": where, "spans": [
                {"field": path, "type": s.type, "start": s.start, "end": s.end, "before": s.text, "after": s.new,
                 "context": original[max(0, s.start - 12):s.end + 12]}
                for path, original, spans in fields for s in spans]})

    def summary(self) -> dict:
        return {"records_scanned": self.stats["scanned"], "records_changed": self.stats["changed"],
                "spans_replaced": sum(self.by_type.values()),
                "spans_by_type": dict(self.by_type.most_common()),
                "records_by_type": dict(self.records_with.most_common())}
