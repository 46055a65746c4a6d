"""Property-based fuzzing of the config loader and the data tools (issue 23, scope item 1).

Properties:

- configs: any YAML bytes fed to `load_config` give either a Config or a ConfigError naming the file
  (and, for an unknown key or a wrong-type value, the dotted key); never another exception type.
- data files: any bytes fed to every `seektune data` tool (inspect, clean, split, balance, augment,
  curriculum, mix) give either a summary or a DataError naming the file; never another exception type.
  Nothing is lost: read = used + rejected for each tool, every tool reads the same number of records,
  and for JSONL that number is the count of non-blank lines.
- the real command line exits 0 or 2 with `error: ...` naming the file or key, never a traceback.

Seeded (derandomize) and bounded so `make test` stays short; SEEKTUNE_LONG=1 runs the slow-marked long
forms with many more examples (bench/fuzz_report.py runs those and prints the table of
docs/reliability.md). The explicit @example inputs are the crashes fuzzing found, fixed in src/.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LONG = os.environ.get("SEEKTUNE_LONG") == "1"
# bench/fuzz_report.py sets SEEKTUNE_FUZZ_EXAMPLES for a measured run of the long forms
LONG_EXAMPLES = int(os.environ.get("SEEKTUNE_FUZZ_EXAMPLES", "1000"))

FAST = settings(derandomize=True, max_examples=12, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
LONGS = settings(FAST, max_examples=LONG_EXAMPLES)
long_only = pytest.mark.skipif(not LONG, reason="long form only (SEEKTUNE_LONG=1); the short form runs by default")

# what the long forms saw, for bench/fuzz_report.py: category -> [inputs, crashes, lost]
STATS: dict[str, list[int]] = {}


def _count(cat: str, crashed: bool = False, lost: bool = False) -> None:
    s = STATS.setdefault(cat, [0, 0, 0])
    s[0] += 1
    s[1] += crashed
    s[2] += lost


# ==========================================================================================
# Configs
# ==========================================================================================

BASE_CONFIG = {
    "model": {"name_or_path": "tiny-qwen2", "task": "causal_lm"},
    "adapter": {"kind": "lora", "r": 8, "alpha": 16},
    "data": {"train": "data/train.jsonl", "format": "auto", "max_length": 256},
    "train": {"stage": "sft", "lr": 2e-4, "epochs": 1, "batch_size": 2, "max_steps": 10, "seed": 1},
    "eval": {},
}


def _section_paths():
    """Dotted paths of every pydantic section and sub-section (where an unknown key must be refused)."""
    from pydantic import BaseModel

    from seektune.config import Config

    out = [""]

    def walk(model, prefix):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out.append(prefix + name)
                walk(ann, prefix + name + ".")

    walk(Config, "")
    return out


def _leaf_paths():
    from pydantic import BaseModel

    from seektune.config import Config

    out = []

    def walk(model, prefix):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, prefix + name + ".")
            else:
                out.append(prefix + name)

    walk(Config, "")
    return out


SECTIONS = _section_paths()
LEAVES = _leaf_paths()

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.binary(max_size=6))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c,
                                                                                          max_size=3)), max_leaves=6)
# wrong on purpose: a structure, bytes or a string no numeric/bool/enum field accepts
wrong_values = st.one_of(st.lists(st.integers(), min_size=1, max_size=3), st.dictionaries(
    st.text("abc", min_size=1, max_size=3), st.integers(), min_size=1, max_size=2),
    st.just("zz-not-a-value"), st.just({"nested": {"deep": 1}}))
unknown_names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=10).map(lambda s: "zq" + s)


def _set(d: dict, path: str, value) -> None:
    parts = path.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _dump(data) -> bytes:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8")


def _yaml_oddity(text: bytes, kind: str, pos: int) -> bytes:
    lines = text.split(b"\n")
    i = pos % max(1, len(lines))
    if kind == "tabs":
        lines = [l.replace(b"  ", b"\t", 1) for l in lines]
    elif kind == "duplicate_key":
        lines.insert(i + 1, lines[i])
    elif kind == "anchor":
        return b"x-common: &common {lr: 0.001, epochs: 2}\n" + text + b"\nother: *common\n"
    elif kind == "merge":
        return b"base: &b {lr: 0.001}\n" + text.replace(b"train:\n", b"train:\n  <<: *b\n", 1)
    elif kind == "list_top":
        return b"- " + text.replace(b"\n", b"\n  ")
    elif kind == "scalar_top":
        return b"just a string\n"
    elif kind == "junk":
        return text[:pos % (len(text) + 1)] + bytes(range(256))[pos % 200:pos % 200 + 40] + text[pos % (len(text) + 1):]
    elif kind == "truncate":
        return text[: pos % (len(text) + 1)]
    elif kind == "gbk":
        return text.decode("utf-8").replace("tiny-qwen2", "模型").encode("gbk", errors="replace")
    elif kind == "utf16":
        return text.decode("utf-8").encode("utf-16")
    elif kind == "utf16_nobom":
        return text.decode("utf-8").encode("utf-16-le")
    elif kind == "bom":
        return b"\xef\xbb\xbf" + text
    elif kind == "nul":
        return text[: pos % (len(text) + 1)] + b"\x00" + text[pos % (len(text) + 1):]
    elif kind == "deep":
        return text + b"\nx: " + b"[" * 3000 + b"]" * 3000 + b"\n"
    elif kind == "huge_int":
        return text.replace(b"max_steps: 10", b"max_steps: 1" + b"0" * 5000)
    elif kind == "python_tag":
        return text + b"\nevil: !!python/object/apply:os.system ['true']\n"
    return b"\n".join(lines)


ODDITIES = ["tabs", "duplicate_key", "anchor", "merge", "list_top", "scalar_top", "junk", "truncate", "gbk", "utf16",
            "utf16_nobom", "bom", "nul", "deep", "huge_int", "python_tag", "none"]


def check_config_bytes(raw: bytes, must_name: str | None = None, cat: str = "config") -> str:
    """The property: load_config gives a Config or a ConfigError naming the file (and `must_name`)."""
    from seektune.config import ConfigError, load_config

    d = Path(tempfile.mkdtemp(prefix="fuzzcfg-"))
    try:
        p = d / "fuzz.yaml"
        p.write_bytes(raw)
        try:
            load_config(p)
            result = "ok"
        except ConfigError as e:
            msg = str(e)
            assert str(p) in msg, f"ConfigError does not name the file: {msg}"
            if must_name:
                assert must_name in msg, f"ConfigError does not name {must_name!r}: {msg}"
            result = msg
        except Exception:
            _count(cat, crashed=True)
            raise
        _count(cat)
        return result
    finally:
        shutil.rmtree(d, ignore_errors=True)


config_mutation = st.tuples(st.sampled_from(LEAVES), values)


@st.composite
def mutated_configs(draw):
    data = json.loads(json.dumps(BASE_CONFIG))
    for path, v in draw(st.lists(config_mutation, max_size=3)):
        _set(data, path, v)
    for sec in draw(st.lists(st.sampled_from(SECTIONS), max_size=2)):
        _set(data, (sec + "." if sec else "") + draw(unknown_names), draw(values))
    try:
        text = _dump(data)
    except yaml.YAMLError:
        text = b"model: {}\n"
    return _yaml_oddity(text, draw(st.sampled_from(ODDITIES)), draw(st.integers(0, 10_000)))


def _config_mutated(raw: bytes, cat="config/mutated"):
    check_config_bytes(raw, cat=cat)


def _config_unknown_key(section: str, name: str, cat="config/unknown_key"):
    data = json.loads(json.dumps(BASE_CONFIG))
    dotted = (section + "." if section else "") + name
    _set(data, dotted, 1)
    msg = check_config_bytes(_dump(data), must_name=dotted, cat=cat)
    assert msg != "ok" and "unknown key" in msg, msg


def _config_wrong_type_named(leaf: str, value, cat="config/wrong_type"):
    data = json.loads(json.dumps(BASE_CONFIG))
    _set(data, leaf, value)
    msg = check_config_bytes(_dump(data), cat=cat)
    if msg != "ok":
        named = [ln.strip().split(":")[0] for ln in msg.splitlines()[1:]]
        assert named and all(n for n in named), f"a problem line names no key: {msg}"


@FAST
@given(mutated_configs())
@example(b"train:\n  lr: 1\n  lr: 2\n")                                  # duplicate key: silently last-wins
@example(b"\x00\xff\xfe\x01junk")                                        # binary: UnicodeDecodeError
@example("model:\n  name_or_path: 模型\n".encode("gbk"))                  # GBK: UnicodeDecodeError
@example(b"train: [1, 2]\n")                                              # section a list: TypeError
@example(b"model: abc\n")                                                 # section a string: AttributeError
@example(b"train: !!set {a, b}\n")                                        # a set: message named no key
@example(b"train: {max_steps: 1" + b"0" * 5000 + b"}\n")                  # huge int: ValueError
@example(b"x: " + b"[" * 3000 + b"]" * 3000 + b"\n")                     # deep nesting: RecursionError
@example(b"align: [1]\ntrain: {stage: dpo}\ndpo: 3\n")
def test_fuzz_config_mutated(raw):
    _config_mutated(raw)


@FAST
@given(st.sampled_from(SECTIONS), unknown_names)
def test_fuzz_config_unknown_key_at_every_level_is_named(section, name):
    _config_unknown_key(section, name)


@FAST
@given(st.sampled_from(LEAVES), st.one_of(values, wrong_values))
def test_fuzz_config_wrong_types_name_the_key(leaf, value):
    _config_wrong_type_named(leaf, value)


# ==========================================================================================
# Data files
# ==========================================================================================

FIELDS = ["instruction", "input", "output", "question", "answer", "text", "label", "conversations", "messages",
          "chosen", "rejected", "prompt", "tokens", "tags", "system", "from", "value", "role", "content"]
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
field_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10), words),
                            lambda c: st.one_of(st.lists(c, max_size=3),
                                                st.dictionaries(st.sampled_from(FIELDS), c, max_size=3)),
                            max_leaves=6)
good_records = st.one_of(
    st.builds(lambda q, a: {"instruction": q, "input": "", "output": a}, words, words),
    st.builds(lambda q, a: {"question": q, "answer": a}, words, words),
    st.builds(lambda t, l: {"text": t, "label": l}, words, st.sampled_from(["pos", "neg", "neu"])),
    st.builds(lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
              words, words),
    st.builds(lambda q, a, b: {"prompt": q, "chosen": a, "rejected": b}, words, words, words),
)
records = st.one_of(good_records, st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4))

ENCODINGS = ["utf-8", "utf-8-sig", "gbk", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "gb18030"]
MUTATIONS = ["none", "truncate", "nul", "bom", "huge_line", "junk", "dup_line", "drop_bytes", "mixed_csv",
             "mixed_json", "bad_quote", "crlf", "empty_fields", "lone_surrogate", "deep", "huge_int", "blank_lines"]
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".jsonl.gz"]


def _serialise(recs: list[dict], suffix: str) -> str:
    if suffix.startswith(".jsonl"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    if suffix == ".json":
        return json.dumps(recs, ensure_ascii=False, indent=1)
    import csv

    delim = "\t" if suffix == ".tsv" else ","
    cols = sorted({k for r in recs for k in r}) or ["text"]
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delim)
    w.writerow(cols)
    for r in recs:
        w.writerow(["" if r.get(c) is None else (r[c] if isinstance(r.get(c), str) else json.dumps(r[c]))
                    for c in cols])
    return buf.getvalue()


def _mutate(raw: bytes, kind: str, pos: int) -> bytes:
    n = len(raw)
    at = pos % (n + 1)
    if kind == "truncate":
        return raw[:at]
    if kind == "nul":
        return raw[:at] + b"\x00" + raw[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    if kind == "huge_line":
        return raw + b'{"instruction": "' + b"x" * 300_000 + b'", "output": "long"}\n'
    if kind == "junk":
        return raw[:at] + bytes(range(256))[pos % 200: pos % 200 + 24] + raw[at:]
    if kind == "dup_line":
        lines = raw.split(b"\n")
        i = pos % max(1, len(lines))
        return b"\n".join(lines[: i + 1] + lines[i:])
    if kind == "drop_bytes":
        return raw[:at] + raw[at + 1 + pos % 7:]
    if kind == "mixed_csv":
        return raw + b"instruction,output\n\"a\",\"b\"\n"
    if kind == "mixed_json":
        return raw + b'[{"instruction": "q", "output": "a"}]\n'
    if kind == "bad_quote":
        return raw[:at] + b'"' + raw[at:] + b'\n"unterminated,field\n'
    if kind == "crlf":
        return raw.replace(b"\n", b"\r\n" if pos % 2 else b"\r")
    if kind == "empty_fields":
        return raw.replace(b'"output": "', b'"output": "", "x": "', 1) + b'{"instruction": "", "output": ""}\n{}\n'
    if kind == "lone_surrogate":
        return raw + b'{"instruction": "\\ud800", "output": "bad surrogate"}\n'
    if kind == "deep":
        return raw + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"\n"
    if kind == "huge_int":
        return raw + b'{"instruction": 1' + b"0" * 5000 + b', "output": "huge"}\n'
    if kind == "blank_lines":
        return b"\n \n\t\n" + raw + b"\n\n\x0c\n"
    return raw


@st.composite
def data_files(draw):
    suffix = draw(st.sampled_from(SUFFIXES))
    recs = draw(st.lists(records, min_size=0, max_size=12))
    enc = draw(st.sampled_from(ENCODINGS))
    raw = _serialise(recs, suffix).encode(enc, errors="replace")
    for m in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        raw = _mutate(raw, m, draw(st.integers(0, 1 << 20)))
    return suffix, raw


def _shared_files():
    if not SHARED.is_dir():
        return []
    out = []
    for p in sorted(SHARED.rglob("*")):
        name = p.name.lower()
        if p.is_file() and any(name.endswith(s) for s in (".json", ".jsonl", ".csv", ".tsv", ".jsonl.gz")):
            out.append(p)
    return out


SHARED_FILES = _shared_files()
_HEADS: dict[Path, bytes] = {}


def _head(p: Path, n: int = 6000) -> bytes:
    """The first ~n bytes of a real file (decompressed), cut at a line end so the mutations decide the damage."""
    if p not in _HEADS:
        import gzip

        with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
            b = f.read(n)
        cut = b.rfind(b"\n")
        _HEADS[p] = b[: cut + 1] if cut > 0 else b
    return _HEADS[p]


def _write(d: Path, suffix: str, raw: bytes) -> Path:
    p = d / f"fuzz{suffix}"
    if suffix.endswith(".gz"):
        import gzip

        with gzip.open(p, "wb") as f:
            f.write(raw)
    else:
        p.write_bytes(raw)
    return p


def _nonblank_lines(p: Path) -> int | None:
    """Independent count of JSONL records read: non-blank lines of the decoded file (None when not decodable)."""
    from seektune.data.io import DataError, detect_encoding

    try:
        enc = detect_encoding(p)
    except DataError:
        return None
    import gzip

    raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
    try:
        text = io.TextIOWrapper(io.BytesIO(raw), encoding=enc, newline="")
        return sum(1 for line in text if line.strip())
    except UnicodeDecodeError:
        return None


def _lines(p: Path) -> int:
    return sum(1 for _ in open(p, encoding="utf-8")) if p.exists() else 0


GENERAL = [{"instruction": f"general question {i}?", "input": "", "output": f"general answer number {i}."}
           for i in range(4)]


def check_data_file(p: Path, out: Path, cat: str = "data") -> dict:
    """The property for one file: every data tool gives a summary or a DataError naming the file, and
    read = used + rejected for each; every tool agrees on `read`. Returns {tool: read or error}."""
    from seektune.data.augment import AugmentOptions, augment_file
    from seektune.data.balance import BalanceOptions, balance_file
    from seektune.data.clean import CleanOptions, clean_file
    from seektune.data.curriculum import curriculum_file
    from seektune.data.inspect import inspect_file
    from seektune.data.io import DataError, write_jsonl
    from seektune.data.mix import MixOptions, mix_files
    from seektune.data.split import split_file

    quiet = lambda *a, **k: None  # noqa: E731
    general = out / "general.jsonl"
    write_jsonl(general, GENERAL)

    def clean(p):
        s = clean_file(p, out / "clean.jsonl", CleanOptions(near_dedup=False), False, log=quiet)
        assert s["read"] == s["kept"] + s["rejected"]
        assert _lines(out / "clean.jsonl") == s["kept"] and _lines(out / "clean.rejects.jsonl") == s["rejected"]
        return s["read"]

    def inspect(p):
        r = inspect_file(p, near_sample=50)
        return r["records"] + r["malformed_lines"]

    def split(p):
        s = split_file(p, out / "split", log=quiet)
        assert sum(_lines(out / "split" / f"{k}.jsonl") for k in s["counts"]) == sum(s["counts"].values())
        return sum(s["counts"].values()) + s["rejected"]

    def balance(p):
        s = balance_file(p, out / "balance.jsonl", BalanceOptions(max_share=1.0), log=quiet)
        assert s["written"] == _lines(out / "balance.jsonl")
        return sum(s["before"].values()) + s["rejected"]

    def augment(p):
        s = augment_file(p, out / "augment.jsonl", AugmentOptions(swap_rate=0.3), False, log=quiet)
        assert s["written"] == _lines(out / "augment.jsonl")
        return s["source"] + s["rejected"]

    def curriculum(p):
        s = curriculum_file(p, out / "curriculum.jsonl", show_progress=False, log=quiet)
        assert s["written"] == _lines(out / "curriculum.jsonl")
        return s["written"] + s["rejected"]

    def mix(p):
        s = mix_files(p, out / "mix.jsonl", MixOptions(general=str(general), ratio=0.2), log=quiet)
        assert s["domain_records"] + s["general_records"] == _lines(out / "mix.jsonl")
        return s["domain_records"] + s["rejected"]  # the general file is clean: every reject is the domain's

    results: dict = {}
    for name, fn in (("clean", clean), ("inspect", inspect), ("split", split), ("balance", balance),
                     ("augment", augment), ("curriculum", curriculum), ("mix", mix)):
        try:
            results[name] = fn(p)
        except DataError as e:
            msg = str(e)
            assert str(p) in msg or p.name in msg, f"{name}: DataError does not name the file: {msg}"
            results[name] = "error"
        except AssertionError:
            _count(f"{cat}", lost=True)
            raise
        except Exception:
            _count(f"{cat}", crashed=True)
            raise
    reads = {k: v for k, v in results.items() if v != "error"}
    lost = len(set(reads.values())) > 1
    if not lost and p.name.endswith((".jsonl", ".jsonl.gz")) and reads:
        n = _nonblank_lines(p)
        lost = n is not None and n != next(iter(reads.values()))
    _count(cat, lost=lost)
    assert not lost, f"the tools disagree on what was read (or lost lines): {results}, non-blank lines " \
                     f"{_nonblank_lines(p) if p.name.endswith(('.jsonl', '.jsonl.gz')) else '-'}"
    return results


def _data_case(suffix: str, raw: bytes, cat: str):
    d = Path(tempfile.mkdtemp(prefix="fuzzdata-"))
    try:
        out = d / "out"
        out.mkdir()
        check_data_file(_write(d, suffix, raw), out, cat)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@FAST
@given(data_files())
@example((".jsonl", b'{"instruction": 1' + b"0" * 5000 + b', "output": "x"}\n'))  # int limit: ValueError
@example((".jsonl", b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"\n"))            # deep: RecursionError
@example((".jsonl", b'{"instruction": "\\ud800", "output": "bb"}\n'))          # lone surrogate: crashed writes
@example((".json", b'[{"instruction": "\\udfff", "output": "bb"}]'))
@example((".csv", b"instruction,output\n"))                                     # balance: ZeroDivisionError
@example((".csv", b""))
@example((".jsonl", '{"instruction": "你好", "output": "bb"}\n'.encode("utf-16-le")))
@example((".csv", 'instruction,output\n你好,回答\n'.encode("gbk")))
@example((".csv", b'instruction,output\n"a,bb\nc,"d"e\n'))
@example((".csv", b"t\x00e\x00x\x00t\x00\r\x00\n\x00"))                   # UTF-16 no BOM; split named no file
def test_fuzz_data_files(case):
    _data_case(*case, cat="data/generated")


# a real file of ../shared/data (index), up to 3 mutations, a re-encoding: the short and long forms draw alike
REAL_FILE_CASE = (st.integers(0, 10_000),
                  st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 1 << 20)), max_size=3),
                  st.sampled_from(["utf-8", "gbk", "utf-16", "latin-1", "keep"]))


@FAST
@given(*REAL_FILE_CASE)
def test_fuzz_real_shared_files_mutated(which, mutations, enc):
    if not SHARED_FILES:
        pytest.skip("../shared/data not present")
    _real_case(which, mutations, enc, "data/shared")


def _real_case(which, mutations, enc, cat):
    src = SHARED_FILES[which % len(SHARED_FILES)]
    raw = _head(src)
    if enc != "keep":
        from seektune.data.io import detect_encoding

        try:
            raw = raw.decode(detect_encoding(src), errors="replace").encode(enc, errors="replace")
        except Exception:
            pass
    for m, pos in mutations:
        raw = _mutate(raw, m, pos)
    suffix = ".jsonl.gz" if src.name.endswith(".jsonl.gz") else src.suffix
    _data_case(suffix, raw, cat)


# ==========================================================================================
# The real command line: exit 0 or 2, never a traceback (each call costs ~3 s of import)
# ==========================================================================================

def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "seektune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _assert_clean_exit(r: subprocess.CompletedProcess, names: str):
    assert r.returncode in (0, 2), (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    if r.returncode == 2:
        assert "error:" in r.stderr and names in r.stderr.replace("\n", ""), r.stderr[-3000:]


def test_cli_config_and_data_exit_0_or_2_without_traceback(tmp_path):
    """A few examples through `python -m seektune`: a config fuzzing broke, one bad data file per data tool."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes("model:\n  name_or_path: 模型\ntrain: [1]\n".encode("gbk"))
    r = _cli("config", str(cfg))
    _assert_clean_exit(r, "bad.yaml")
    assert r.returncode == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "q", "output": "an answer"}\n{"instr\n\x00\x00\n'
                    b'{"instruction": 1' + b"0" * 5000 + b', "output": "x"}\n{"instruction": "\\ud800", "output": "y"}\n')
    r = _cli("data", "clean", str(bad), "--out", str(tmp_path / "c.jsonl"), "--no-progress", "--json")
    _assert_clean_exit(r, "bad.jsonl")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["read"] == 5 and s["kept"] + s["rejected"] == 5, s

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"label,text\n")
    r = _cli("data", "balance", str(empty), "--out", str(tmp_path / "b.jsonl"), "--json")
    _assert_clean_exit(r, "empty.csv")
    assert r.returncode == 2


@pytest.mark.slow
@long_only
@LONGS
@given(mutated_configs())
def test_long_fuzz_config_mutated(raw):
    _config_mutated(raw)


@pytest.mark.slow
@long_only
@LONGS
@given(st.sampled_from(SECTIONS), unknown_names)
def test_long_fuzz_config_unknown_key(section, name):
    _config_unknown_key(section, name)


@pytest.mark.slow
@long_only
@LONGS
@given(st.sampled_from(LEAVES), st.one_of(values, wrong_values))
def test_long_fuzz_config_wrong_types(leaf, value):
    _config_wrong_type_named(leaf, value)


@pytest.mark.slow
@long_only
@settings(LONGS, max_examples=max(1, LONG_EXAMPLES // 2))
@given(data_files())
def test_long_fuzz_data_files(case):
    _data_case(*case, cat="data/generated")


@pytest.mark.slow
@long_only
@settings(LONGS, max_examples=max(1, LONG_EXAMPLES // 2))
@given(*REAL_FILE_CASE)
def test_long_fuzz_real_shared_files_mutated(which, mutations, enc):
    if not SHARED_FILES:
        pytest.skip("../shared/data not present")
    _real_case(which, mutations, enc, "data/shared")


@pytest.mark.slow
@long_only
@settings(LONGS, max_examples=max(1, LONG_EXAMPLES // 100))
@given(data_files())
def test_long_fuzz_cli_data_clean(case):
    suffix, raw = case
    with tempfile.TemporaryDirectory() as d:
        p = _write(Path(d), suffix, raw)
        r = _cli("data", "clean", str(p), "--out", str(Path(d) / "o.jsonl"), "--no-progress", "--json")
        try:
            _assert_clean_exit(r, p.name)
            if r.returncode == 0:
                s = json.loads(r.stdout)
                assert s["read"] == s["kept"] + s["rejected"]
        except AssertionError:
            _count("cli", crashed=True)
            raise
        _count("cli")
