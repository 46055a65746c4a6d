"""What `--bench` names: a benchmark as lm-evaluation-harness task configs pointed at local files.

    cmmlu                      every subject found in eval.cmmlu_dir (test/ and dev/ CSVs, the release layout)
    cmmlu:anatomy,virology     some subjects
    gsm8k                      eval.gsm8k_file (the test split); few-shot examples from gsm8k_train.jsonl beside it
    gsm8k:PATH                 another GSM8K-shaped file (question, answer with `#### N`)
    mcq:PATH                   your multiple-choice file (CSV/JSONL/JSON), the option letters scored
    mcq:PATH:dev=DEV           ... with few-shot examples from DEV
    mcq:PATH:score=text        ... the option texts scored (length normalisation then matters)

CMMLU and GSM8K reuse the harness's own task files (prompt, description, few-shot split, answer
filters): only the dataset fields change, so the numbers follow its published method. A user file is
read by seektune's readers (any encoding) and normalised to JSONL; rows that are not a question with
options and a valid answer go to a rejects file with the reason.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...data.formats import text
from ...data.io import DataError, read_records, write_jsonl
from ...data.reasoning import is_mostly_cjk

LETTERS = "ABCDEFGHIJ"
KINDS = ("cmmlu", "gsm8k", "mcq")


@dataclass
class Task:
    """One harness task: its config dict and how many questions its test split has."""

    name: str
    subject: str
    config: dict
    size: int


@dataclass
class Bench:
    """One `--bench` entry: a display name, its tasks and the metrics it reports (per question 0/1)."""

    name: str
    kind: str                       # "choice" (log-likelihood of options) or "generate"
    tasks: list[Task]
    metrics: list[str]              # keys of the harness's per-sample results, e.g. acc, exact_match,strict-match
    spec: str = ""
    notes: list[str] = field(default_factory=list)
    rejected: int = 0


def harness_tasks_dir() -> Path:
    try:
        import lm_eval.tasks
    except ImportError as e:  # pragma: no cover - lm-eval is a dependency
        raise DataError("benchmarks need lm-evaluation-harness: pip install lm-eval") from e
    return Path(lm_eval.tasks.__file__).parent


def _harness_config(rel: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(harness_tasks_dir() / rel, resolve_func=True)


def _local(cfg: dict, task: str, path_kind: str, files: dict[str, str]) -> dict:
    """The harness's task config with its hub dataset swapped for local files."""
    cfg = {k: v for k, v in cfg.items() if k not in ("tag", "group", "dataset_name", "task_alias")}
    cfg.update(task=task, dataset_path=path_kind, dataset_kwargs={"data_files": files})
    return cfg


def _count_rows(path: Path) -> int:
    return sum(1 for _ in read_records(path))


def parse(spec: str, *, cmmlu_dir: str, gsm8k_file: str, work_dir: Path) -> Bench:
    """A `--bench` string as a Bench, or a DataError naming what is wrong with it."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        raise DataError(f"--bench {spec}: unknown benchmark '{kind}' (known: {', '.join(KINDS)})"
                        + (f"; did you mean {close[0]}?" if close else ""))
    if kind == "cmmlu":
        return _cmmlu(spec, rest, Path(cmmlu_dir))
    if kind == "gsm8k":
        return _gsm8k(spec, Path(rest) if rest else Path(gsm8k_file))
    return _mcq(spec, rest, work_dir)


def _cmmlu(spec: str, rest: str, root: Path) -> Bench:
    test_dir, dev_dir = root / "test", root / "dev"
    if not test_dir.is_dir():
        raise DataError(f"--bench {spec}: no CMMLU test folder at {test_dir} (set eval.cmmlu_dir / --cmmlu-dir "
                        "to the folder holding test/ and dev/)")
    found = sorted(p.stem for p in test_dir.glob("*.csv"))
    known = {p.stem.removeprefix("cmmlu_") for p in (harness_tasks_dir() / "cmmlu").glob("cmmlu_*.yaml")}
    wanted = [s.strip() for s in rest.split(",") if s.strip()] if rest else [s for s in found if s in known]
    tasks = []
    for subj in wanted:
        if subj not in found:
            close = difflib.get_close_matches(subj, found, n=3)
            raise DataError(f"--bench {spec}: no CMMLU subject '{subj}' in {test_dir}"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if subj not in known:
            raise DataError(f"--bench {spec}: '{subj}' is not a CMMLU subject of lm-evaluation-harness")
        files = {"test": str(test_dir / f"{subj}.csv")}
        if (dev_dir / f"{subj}.csv").exists():
            files["dev"] = str(dev_dir / f"{subj}.csv")
        cfg = _local(_harness_config(f"cmmlu/cmmlu_{subj}.yaml"), f"seektune_cmmlu_{subj}", "csv", files)
        if "dev" not in files:
            cfg.pop("fewshot_split", None)
        tasks.append(Task(cfg["task"], subj, cfg, _count_rows(test_dir / f"{subj}.csv")))
    name = "cmmlu" if not rest else ("cmmlu:" + ",".join(wanted) if len(wanted) <= 3 else f"cmmlu ({len(wanted)} subjects)")
    return Bench(name, "choice", tasks, ["acc", "acc_norm"], spec)


def _gsm8k(spec: str, test: Path) -> Bench:
    if not test.exists():
        raise DataError(f"--bench {spec}: GSM8K file not found: {test} (set eval.gsm8k_file / --gsm8k-file)")
    files = {"test": str(test)}
    train = test.with_name(test.name.replace("test", "train"))
    if train != test and train.exists():
        files["train"] = str(train)
    cfg = _local(_harness_config("gsm8k/gsm8k.yaml"), "seektune_gsm8k", "json", files)
    notes = []
    if "train" not in files:
        cfg.pop("training_split", None)
        cfg["fewshot_split"] = "test"
        notes.append(f"no {train.name} beside {test.name}: few-shot examples come from the test file itself")
    b = Bench("gsm8k", "generate", [Task(cfg["task"], "gsm8k", cfg, _count_rows(test))],
              ["exact_match,strict-match", "exact_match,flexible-extract"], spec, notes)
    return b


def _mcq_options(d: dict) -> tuple[list[str] | None, str]:
    """Options of a record: columns A, B, C... or a list under options / choices."""
    keys = {k.lower(): k for k in d}
    for name in ("options", "choices"):
        if name in keys and isinstance(d[keys[name]], (list, dict)):
            v = d[keys[name]]
            return ([text(x) for x in (v.values() if isinstance(v, dict) else v)], name)
    opts = [text(d[k]) for k in (next((kk for kk in d if kk.upper() == x and len(kk) == 1), None) for x in LETTERS)
            if k is not None]
    return (opts if len(opts) >= 2 else None, "A/B/C columns")


def _mcq_record(d: dict) -> tuple[dict | None, str]:
    keys = {k.lower(): k for k in d}
    q = next((text(d[keys[k]]).strip() for k in ("question", "query", "prompt", "stem") if k in keys), "")
    if not q:
        return None, "no question field (question / query / prompt / stem)"
    opts, _ = _mcq_options(d)
    if not opts:
        return None, "fewer than 2 options (columns A, B, ... or a list under options / choices)"
    if any(not o.strip() for o in opts):
        return None, "an empty option"
    ans_key = next((keys[k] for k in ("answer", "label", "target", "gold") if k in keys), None)
    if ans_key is None:
        return None, "no answer field (answer / label / target / gold)"
    raw = d[ans_key]
    a = text(raw).strip()
    letters = list(LETTERS[: len(opts)])
    if a.upper() in letters:
        gold = letters.index(a.upper())
    elif isinstance(raw, int) or re.fullmatch(r"\d+", a):
        gold = int(a)
        if not 0 <= gold < len(opts):
            return None, f"answer index {gold} outside 0..{len(opts) - 1}"
    elif a in opts:
        gold = opts.index(a)
    else:
        return None, f"answer {a!r} is neither a letter {letters[0]}-{letters[-1]}, an index nor an option's text"
    ask = "答案：" if is_mostly_cjk(q) else "Answer:"
    prompt = q + "\n" + "".join(f"{x}. {o}\n" for x, o in zip(letters, opts)) + ask
    return {"prompt": prompt, "question_prompt": f"{q}\n{ask}", "question": q, "options": opts, "letters": letters,
            "gold": gold}, ""


def normalise_mcq(path: Path, out: Path, rejects: Path) -> tuple[int, int]:
    """Write the usable rows of a user file as harness JSONL; returns (kept, rejected)."""
    kept, bad, errors = [], [], []
    for r in read_records(path, on_error="collect", errors=errors):
        row, why = _mcq_record(r.data)
        if row is None:
            bad.append({"where": r.where, "reason": why, "record": r.data})
        else:
            kept.append({**row, "where": r.where})
    bad += errors
    write_jsonl(out, kept)
    if bad:
        write_jsonl(rejects, bad)
    elif rejects.exists():
        rejects.unlink()
    return len(kept), len(bad)


def _mcq(spec: str, rest: str, work_dir: Path) -> Bench:
    parts = rest.split(":")
    path = Path(parts[0]) if parts and parts[0] else None
    opts = {}
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        if not eq or k not in ("dev", "score"):
            raise DataError(f"--bench {spec}: unknown option '{p}' (options: dev=FILE, score=letters|text)")
        opts[k] = v
    if path is None:
        raise DataError(f"--bench {spec}: give the file, e.g. mcq:my_exam.csv")
    if not path.exists():
        raise DataError(f"--bench {spec}: file not found: {path}")
    score = opts.get("score", "letters")
    if score not in ("letters", "text"):
        raise DataError(f"--bench {spec}: score={score}: use letters or text")
    stem = re.sub(r"[^0-9A-Za-z_]+", "_", path.stem)
    work_dir.mkdir(parents=True, exist_ok=True)
    files, notes, rejected = {}, [], 0
    for split, src in (("test", path), ("dev", Path(opts["dev"]) if "dev" in opts else None)):
        if src is None:
            continue
        if not src.exists():
            raise DataError(f"--bench {spec}: dev file not found: {src}")
        out = work_dir / f"mcq_{stem}_{split}.jsonl"
        kept, bad = normalise_mcq(src, out, work_dir / f"rejects_mcq_{stem}_{split}.jsonl")
        if not kept:
            raise DataError(f"--bench {spec}: no usable question in {src} ({bad} rejected: see "
                            f"{work_dir / f'rejects_mcq_{stem}_{split}.jsonl'})")
        if bad:
            notes.append(f"{src}: {bad} rows rejected (reasons in {work_dir / f'rejects_mcq_{stem}_{split}.jsonl'})")
        rejected += bad if split == "test" else 0
        files[split] = str(out)
        if split == "test":
            size = kept
    cfg = {"task": f"seektune_mcq_{stem}", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
           "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
           "doc_to_target": "gold", "doc_to_choice": "letters" if score == "letters" else "options",
           "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                           {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
           "metadata": {"version": 1.0}}
    if score == "text":  # the options' own words are the continuations: the question alone is the prompt
        cfg["doc_to_text"] = "{{question_prompt}}"
    if "dev" in files:
        cfg.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
    return Bench(f"mcq:{path.name}", "choice", [Task(cfg["task"], path.stem, cfg, size)], ["acc", "acc_norm"],
                 spec, notes, rejected)
