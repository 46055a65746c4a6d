"""`data split` (stratified, seeded, no near-duplicate leakage), `data balance` and `data mix`."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from seektune.data.balance import BalanceOptions, balance_file, downsample_caps, upsample_targets
from seektune.data.io import DataError
from seektune.data.mix import MixOptions, mix_files
from seektune.data.split import SplitOptions, split_file

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(n))


def _write(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(l) for l in open(path, encoding="utf-8")]


@pytest.fixture
def clustered(tmp_path) -> Path:
    """300 classification rows: 3 labels (60/30/10%), 40 clusters of 3 near-duplicate rows each."""
    rng = random.Random(0)
    rows = []
    for i in range(300):
        label = "pos" if i % 10 < 6 else ("neg" if i % 10 < 9 else "neu")
        rows.append({"text": _sentence(rng), "label": label})
    for c in range(40):  # paraphrases: same sentence with one word changed
        base = rows[c]["text"].split()
        for k in range(2):
            para = list(base)
            para[k] = "changed" + str(k)
            rows.append({"text": " ".join(para), "label": rows[c]["label"], "cluster": c})
        rows[c]["cluster"] = c
    rng.shuffle(rows)
    return _write(tmp_path / "cls.jsonl", rows)


def test_split_is_stratified_and_never_leaks_near_duplicates(clustered, tmp_path):
    s = split_file(clustered, tmp_path / "s", SplitOptions(seed=1))
    parts = {k: _read(tmp_path / "s" / f"{k}.jsonl") for k in ("train", "validation", "test")}
    n = sum(len(v) for v in parts.values())
    assert n == 380 and s["counts"]["train"] == len(parts["train"])
    for name, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(len(parts[name]) / n - share) < 0.03, (name, len(parts[name]))
        labels = Counter(r["label"] for r in parts[name])
        assert abs(labels["pos"] / len(parts[name]) - 0.6) < 0.06  # stratified
    where = {}
    for name, rows in parts.items():
        for r in rows:
            if "cluster" in r:
                where.setdefault(r["cluster"], set()).add(name)
    assert len(where) == 40 and all(len(v) == 1 for v in where.values())  # no cluster straddles splits


def test_split_without_grouping_does_leak(clustered, tmp_path):
    """The no-leak property is real: with grouping off, the same data does straddle splits."""
    split_file(clustered, tmp_path / "s", SplitOptions(seed=1, group_near_duplicates=False))
    where = {}
    for name in ("train", "validation", "test"):
        for r in _read(tmp_path / "s" / f"{name}.jsonl"):
            if "cluster" in r:
                where.setdefault(r["cluster"], set()).add(name)
    assert any(len(v) > 1 for v in where.values())


def test_split_is_reproducible_and_seed_dependent(clustered, tmp_path):
    split_file(clustered, tmp_path / "a", SplitOptions(seed=7))
    split_file(clustered, tmp_path / "b", SplitOptions(seed=7))
    split_file(clustered, tmp_path / "c", SplitOptions(seed=8))
    a, b, c = (_read(tmp_path / x / "test.jsonl") for x in "abc")
    assert a == b and a != c


def test_split_keeps_augmented_records_with_their_source_in_train(tmp_path):
    from seektune.data.augment import AugmentOptions, augment_file

    rng = random.Random(3)
    src = _write(tmp_path / "d.jsonl", [{"question": _sentence(rng), "answer": _sentence(rng)} for _ in range(40)])
    augment_file(src, tmp_path / "aug.jsonl", AugmentOptions(swap_rate=0.3, copies=2), show_progress=False)
    rows = _read(tmp_path / "aug.jsonl") + [{"question": _sentence(rng), "answer": _sentence(rng)} for _ in range(40)]
    assert sum("_augmented" in r for r in rows) == 80
    _write(tmp_path / "all.jsonl", rows)
    split_file(tmp_path / "all.jsonl", tmp_path / "s", SplitOptions(seed=0, ratios="6:2:2"))
    train = _read(tmp_path / "s" / "train.jsonl")
    held = _read(tmp_path / "s" / "validation.jsonl") + _read(tmp_path / "s" / "test.jsonl")
    assert held and not any("_augmented" in r for r in held)
    held_answers = {r["answer"] for r in held}
    assert not any(r["answer"] in held_answers for r in train if "_augmented" in r)  # sources of copies stay in train


def test_split_rejects_bad_ratios():
    with pytest.raises(ValueError):
        SplitOptions(ratios="8:1")


def test_balance_caps_share_down_and_up(clustered, tmp_path):
    s = balance_file(clustered, tmp_path / "down.jsonl", BalanceOptions(max_share=0.5, seed=1))
    rows = _read(tmp_path / "down.jsonl")
    c = Counter(r["label"] for r in rows)
    assert s["before"]["pos"] == 228 and max(c.values()) / len(rows) <= 0.5 and c["neu"] == s["before"]["neu"]
    s2 = balance_file(clustered, tmp_path / "down2.jsonl", BalanceOptions(max_share=0.5, seed=1))
    assert _read(tmp_path / "down2.jsonl") == rows and s2["after"] == s["after"]  # seeded
    s = balance_file(clustered, tmp_path / "up.jsonl", BalanceOptions(max_share=0.4, method="up"))
    rows = _read(tmp_path / "up.jsonl")
    c = Counter(r["label"] for r in rows)
    assert c["pos"] == 228 and max(c.values()) / len(rows) <= 0.4
    assert sum("_upsampled" in r for r in rows) == len(rows) - 380


def test_balance_helpers_and_errors(tmp_path):
    assert downsample_caps({"a": 90, "b": 10}, 0.7) == {"a": 23, "b": 10}
    t = upsample_targets({"a": 90, "b": 10}, 0.7)
    assert t["a"] == 90 and t["a"] / sum(t.values()) <= 0.7
    with pytest.raises(DataError, match="impossible"):
        downsample_caps({"a": 5, "b": 5, "c": 5}, 0.3)
    src = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="qa.jsonl:1: no label"):
        balance_file(src, tmp_path / "o.jsonl", BalanceOptions())


def test_mix_ratio_and_markers(tmp_path):
    dom = _write(tmp_path / "dom.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(90)])
    gen = _write(tmp_path / "gen.jsonl", [{"instruction": f"g{i}", "input": "", "output": f"o{i}"} for i in range(50)])
    s = mix_files(dom, tmp_path / "mix.jsonl", MixOptions(general=str(gen), ratio=0.1, seed=3))
    rows = _read(tmp_path / "mix.jsonl")
    assert len(rows) == 100 and sum(r["_mix"] == "general" for r in rows) == 10 and s["general_share"] == 0.1
    assert all("messages" in r for r in rows) and not s["with_replacement"]
    mix_files(dom, tmp_path / "mix2.jsonl", MixOptions(general=str(gen), ratio=0.1, seed=3))
    assert _read(tmp_path / "mix2.jsonl") == rows


def test_split_sends_malformed_lines_to_rejects(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "fine row one", "label": "a"}\n{"text": oops}\n{"text": "fine row two", "label": "b"}\n',
                   encoding="utf-8")
    s = split_file(src, tmp_path / "s", SplitOptions())
    rej = _read(tmp_path / "s" / "split.rejects.jsonl")
    assert s["read"] == 3 and s["rejected"] == 1 and sum(s["counts"].values()) == 2
    assert rej[0]["line"] == 2 and rej[0]["rule"] == "read_error" and "invalid JSON" in rej[0]["reason"]
