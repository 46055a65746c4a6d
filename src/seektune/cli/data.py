"""Typer commands of `seektune data ...`: thin wrappers that build an options model, call one module, print.

Every command writes JSONL and a `*.summary.json`; bad input ends in `error: ...` (exit 2) naming the
file and line or the option, never in a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from ..utils.console import console


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
    raise typer.Exit(2)


def _options(cls, **kw):
    """Build an options model from CLI flags (None = keep the default); a bad value names its flag."""
    try:
        return cls.model_validate({k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        _fail("; ".join(f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}"
                        for err in e.errors()))


def _guard(fn, *a, **kw):
    from ..config import ConfigError
    from ..data.io import DataError
    from ..data.templates import TemplateError
    from ..models.presets import ModelError

    try:
        return fn(*a, **kw)
    except (DataError, ConfigError, ModelError, TemplateError) as e:
        _fail(str(e))


def _table(title: str, rows: list[tuple]) -> None:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    for r in rows:
        t.add_row(str(r[0]), f"{r[1]:,}" if isinstance(r[1], int) else str(r[1]))
    console.print(t)


def _dist_rows(d: dict | None, prefix: str = "  ") -> list[tuple]:
    if not d:
        return []
    tot = sum(d.values()) or 1
    return [(f"{prefix}{k}", f"{v:,} ({100 * v / tot:.1f}%)") for k, v in d.items()]


def _emit_json(summary: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


def register(data_app: typer.Typer) -> None:
    @data_app.command("inspect")
    def inspect_cmd(file: Path = typer.Argument(..., help="data file (json, jsonl, csv, tsv, .gz)"),
                    tokenizer: Optional[str] = typer.Option(None, help="preset or folder: also measure tokens"),
                    label: Optional[str] = typer.Option(None, help="field holding the label (default: `label`)"),
                    png: Optional[Path] = typer.Option(None, help="write the length histogram to this PNG"),
                    as_json: bool = typer.Option(False, "--json", help="print the full report as JSON")):
        """Counts, format, encoding, field coverage, lengths, labels, duplicates."""
        from ..data.inspect import inspect_file

        tok = None
        if tokenizer:
            from ..config import ModelConfig
            from ..models.loader import load_tokenizer

            tok = _guard(load_tokenizer, ModelConfig(name_or_path=tokenizer))
        r = _guard(inspect_file, file, tok, label, png, show_progress=True)
        rows = [("records", r["records"]), ("malformed lines", r["malformed_lines"]), ("file type", r["file_type"]),
                ("encoding", r["encoding"]), ("kinds", ", ".join(f"{k} {v:,}" for k, v in r["kinds"].items())),
                ("exact duplicates", r["exact_duplicates"]),
                ("near duplicates", f"{r['near_duplicates']['found']:,} in {r['near_duplicates']['sampled']:,} "
                                    f"(threshold {r['near_duplicates']['threshold']})")]
        rows += [("field coverage", "")] + [(f"  {k}", f"{100 * v:.1f}%") for k, v in r["field_coverage"].items()]
        for unit in ("chars", "tokens"):
            if r[unit]:
                rows.append((f"length ({unit})", "  ".join(f"{k} {v:,}" for k, v in r[unit].items())))
        if r["labels"]:
            rows += [("labels", "")] + _dist_rows(r["labels"])
        _table(f"inspect {file}", rows)
        for e in r["malformed_examples"]:
            console.print(f"  malformed: {e}", markup=False)
        console.print("length in characters:\n" + r["char_histogram"], markup=False)
        if r["token_histogram"]:
            console.print("length in tokens:\n" + r["token_histogram"], markup=False)
        if png:
            console.print(f"histogram: {r['png']}", markup=False)
        _emit_json(r, as_json)

    @data_app.command("clean")
    def clean_cmd(inp: Path = typer.Argument(..., metavar="IN", help="data file"),
                  out: Path = typer.Option(..., "--out", help="cleaned JSONL; rejects go to <stem>.rejects.jsonl"),
                  near_threshold: Optional[float] = typer.Option(None, help="near-duplicate Jaccard threshold (0.8)"),
                  ngram: Optional[int] = typer.Option(None, help="character n-gram size (5)"),
                  no_near_dedup: bool = typer.Option(False, "--no-near-dedup"),
                  no_exact_dedup: bool = typer.Option(False, "--no-exact-dedup"),
                  terms: Optional[str] = typer.Option(None, help="term dictionary: variant -> canonical (JSON/TSV/CSV)"),
                  pii: bool = typer.Option(False, "--pii", help="replace personal data by <TYPE> tags (the "
                                           "`data deidentify` engine; use that command for pseudonyms and a report)"),
                  unicode_form: Optional[str] = typer.Option(None, help="NFC (default), NFKC or none"),
                  min_answer_chars: Optional[int] = typer.Option(None, help="shorter answers are rejected (2)"),
                  max_chars: Optional[int] = typer.Option(None, help="longer rows are rejected (20000)"),
                  min_text_ratio: Optional[float] = typer.Option(None, help="garbled below this text share (0.5)"),
                  keep_no_answer: bool = typer.Option(False, "--keep-no-answer"),
                  workers: Optional[int] = typer.Option(None, help="processes for MinHash (1)"),
                  no_progress: bool = typer.Option(False, "--no-progress"),
                  as_json: bool = typer.Option(False, "--json")):
        """Normalise, de-identify (--pii), filter low quality, drop exact and near duplicates; rejects keep their reason."""
        from ..data.clean import CleanOptions, clean_file

        opts = _options(CleanOptions, near_threshold=near_threshold, ngram=ngram, terms=terms, pii=pii or None,
                        unicode_form=unicode_form, min_answer_chars=min_answer_chars, max_chars=max_chars,
                        min_text_ratio=min_text_ratio, workers=workers,
                        near_dedup=False if no_near_dedup else None, exact_dedup=False if no_exact_dedup else None,
                        drop_no_answer=False if keep_no_answer else None)
        s = _guard(clean_file, inp, out, opts, not no_progress)
        ok = "yes" if s["kept_plus_rejected_equals_read"] else "NO"
        rows = [("read", s["read"]), ("kept", s["kept"]), ("rejected", s["rejected"]),
                ("kept + rejected == read", ok)]
        rows += [(f"  rejected: {k}", v) for k, v in s["rejected_by_rule"].items()]
        rows += [(f"  changed: {k}", v) for k, v in s["changed_by_rule"].items()]
        rows += [("records/s", s["records_per_s"])]
        _table(f"clean {inp} -> {out}", rows)
        console.print(f"rejects: {s['rejects']}", markup=False)
        _emit_json(s, as_json)

    @data_app.command("deidentify")
    def deidentify_cmd(inp: Path = typer.Argument(..., metavar="IN", help="data file"),
                       out: Path = typer.Option(..., "--out", help="de-identified JSONL; <stem>.report.json and "
                                                                   "<stem>.sample.jsonl go next to it"),
                       mode: Optional[str] = typer.Option(None, help="tag (<PHONE>, default) or pseudonym "
                                                                     "(consistent fake values of the same shape)"),
                       types: Optional[str] = typer.Option(None, help="comma-separated entity types (default all): "
                                                                      "ID_CARD,PHONE,BANK_CARD,EMAIL,ADDRESS,PERSON,"
                                                                      "DATE_OF_BIRTH,MRN"),
                       seed: Optional[int] = typer.Option(None, help="pseudonym key (0); keep it private"),
                       min_score: Optional[float] = typer.Option(None, help="Presidio score a detection needs (0.5)"),
                       sample: Optional[int] = typer.Option(None, help="changed records in the review sample (20)"),
                       no_progress: bool = typer.Option(False, "--no-progress"),
                       as_json: bool = typer.Option(False, "--json")):
        """Replace personal data (IDs, phones, cards, e-mails, addresses, names, birth dates, record numbers) in
        text fields, with Microsoft Presidio plus Chinese recognizers; everything else stays as it was."""
        from ..data.deidentify import DeidentifyOptions, deidentify_file

        opts = _options(DeidentifyOptions, mode=mode, types=types, seed=seed, min_score=min_score, sample=sample)
        s = _guard(deidentify_file, inp, out, opts, not no_progress)
        rows = [("records scanned", s["records_scanned"]), ("records changed", s["records_changed"]),
                ("spans replaced", s["spans_replaced"])]
        rows += [(f"  {k}", v) for k, v in s["spans_by_type"].items()]
        rows += [("rejected (malformed)", s["rejected"]), ("records/s", s["records_per_s"])]
        _table(f"deidentify {inp} -> {out} ({s['mode']})", rows)
        console.print(f"report: {s['report']}\nreview sample: {s['sample']}", markup=False)
        _emit_json(s, as_json)

    @data_app.command("split")
    def split_cmd(inp: Path = typer.Argument(..., metavar="IN"),
                  out: Path = typer.Option(..., "--out", help="folder for train/validation/test.jsonl"),
                  ratios: str = typer.Option("8:1:1", help="train:validation:test"),
                  label: Optional[str] = typer.Option(None, help="field to stratify on"),
                  seed: int = typer.Option(42),
                  near_threshold: Optional[float] = typer.Option(None, help="near duplicates share a split (0.7)"),
                  no_grouping: bool = typer.Option(False, "--no-grouping", help="do not group near duplicates"),
                  as_json: bool = typer.Option(False, "--json")):
        """Deterministic stratified split; near duplicates never straddle two splits."""
        from ..data.split import split_file, SplitOptions

        opts = _options(SplitOptions, ratios=ratios, label=label, seed=seed, near_threshold=near_threshold,
                        group_near_duplicates=False if no_grouping else None)
        s = _guard(split_file, inp, out, opts)
        rows = [("read", s["read"]), ("rejected (malformed)", s["rejected"])]
        rows += [(k, v) for k, v in s["counts"].items()]
        rows += [("duplicate groups kept together", s["records_in_multi_record_groups"])]
        for k, d in (s["labels"] or {}).items():
            rows += [(f"{k} labels", "")] + _dist_rows(d)
        _table(f"split {inp} -> {out}/", rows)
        _emit_json(s, as_json)

    @data_app.command("balance")
    def balance_cmd(inp: Path = typer.Argument(..., metavar="IN"),
                    out: Path = typer.Option(..., "--out"),
                    label: Optional[str] = typer.Option(None, help="field holding the class"),
                    max_share: float = typer.Option(0.7, help="cap on any class's share"),
                    method: str = typer.Option("down", help="down (drop) or up (copy)"),
                    seed: int = typer.Option(42),
                    as_json: bool = typer.Option(False, "--json")):
        """Cap every class at a share by seeded down- or upsampling; prints before/after."""
        from ..data.balance import BalanceOptions, balance_file

        opts = _options(BalanceOptions, label=label, max_share=max_share, method=method, seed=seed)
        s = _guard(balance_file, inp, out, opts)
        rows = [("read", s["read"]), ("written", s["written"])]
        rows += [("before", "")] + _dist_rows(s["before"]) + [("after", "")] + _dist_rows(s["after"])
        _table(f"balance {inp} -> {out} ({s['method']}sample, cap {s['max_share']})", rows)
        _emit_json(s, as_json)

    @data_app.command("mix")
    def mix_cmd(inp: Path = typer.Argument(..., metavar="DOMAIN"),
                general: str = typer.Option(..., "--general", help="general-domain data file"),
                out: Path = typer.Option(..., "--out"),
                ratio: float = typer.Option(0.1, help="share of general records in the output"),
                seed: int = typer.Option(42),
                as_json: bool = typer.Option(False, "--json")):
        """Mix general data into domain data at a ratio (replay against forgetting)."""
        from ..data.mix import MixOptions, mix_files

        opts = _options(MixOptions, general=general, ratio=ratio, seed=seed)
        s = _guard(mix_files, inp, out, opts, log=lambda m: console.print(m, markup=False))
        _table(f"mix -> {out}", [("domain", s["domain_records"]), ("general", s["general_records"]),
                                 ("general share", f"{100 * s['general_share']:.1f}%"), ("rejected", s["rejected"])])
        _emit_json(s, as_json)

    @data_app.command("augment")
    def augment_cmd(inp: Path = typer.Argument(..., metavar="IN"),
                    out: Path = typer.Option(..., "--out"),
                    synonyms: Optional[str] = typer.Option(None, help="JSON {word: [synonyms]} or TSV"),
                    synonym_rate: Optional[float] = typer.Option(None, help="share of words replaced (0.1)"),
                    insert_rate: Optional[float] = typer.Option(None),
                    swap_rate: Optional[float] = typer.Option(None),
                    delete_rate: Optional[float] = typer.Option(None),
                    copies: Optional[int] = typer.Option(None, help="augmented copies per record (1)"),
                    back_translate: Optional[str] = typer.Option(None, help="local model (preset or folder)"),
                    back_translate_return: Optional[str] = typer.Option(
                        None, help="one-direction translation models: the model translating back"),
                    pivot: Optional[str] = typer.Option(None, help="pivot language (English)"),
                    source_language: Optional[str] = typer.Option(None, help="language of the data (Chinese)"),
                    seed: int = typer.Option(42),
                    no_progress: bool = typer.Option(False, "--no-progress"),
                    as_json: bool = typer.Option(False, "--json")):
        """Synonym replacement, random insert/swap/delete, back-translation; copies are marked `_augmented`."""
        from ..data.augment import AugmentOptions, augment_file

        opts = _options(AugmentOptions, synonyms=synonyms, synonym_rate=synonym_rate, insert_rate=insert_rate,
                        swap_rate=swap_rate, delete_rate=delete_rate, copies=copies, back_translate=back_translate,
                        back_translate_return=back_translate_return,
                        pivot=pivot, source_language=source_language, seed=seed)
        s = _guard(augment_file, inp, out, opts, not no_progress)
        _table(f"augment {inp} -> {out}", [("source records", s["source"]), ("augmented copies", s["augmented"]),
                                           ("identical copies skipped", s["unchanged_skipped"]),
                                           ("written", s["written"])])
        _emit_json(s, as_json)

    @data_app.command("curriculum")
    def curriculum_cmd(inp: Path = typer.Argument(..., metavar="IN"),
                       out: Path = typer.Option(..., "--out"),
                       by: str = typer.Option("length", help="length or loss"),
                       model: Optional[str] = typer.Option(None, help="reference model (loss) or tokenizer (length)"),
                       pacing: str = typer.Option("buckets", help="sorted or buckets"),
                       stages: int = typer.Option(4),
                       seed: int = typer.Option(42),
                       no_progress: bool = typer.Option(False, "--no-progress"),
                       as_json: bool = typer.Option(False, "--json")):
        """Order records easy -> hard (by length or reference-model loss); train with data.curriculum=true."""
        from ..data.curriculum import CurriculumOptions, curriculum_file

        opts = _options(CurriculumOptions, by=by, model=model, pacing=pacing, stages=stages, seed=seed)
        s = _guard(curriculum_file, inp, out, opts, not no_progress)
        _table(f"curriculum {inp} -> {out} (by {s['by']})",
               [("written", s["written"]), ("difficulty min / median / max",
                                            f"{s['difficulty']['min']:.2f} / {s['difficulty']['median']:.2f} / "
                                            f"{s['difficulty']['max']:.2f}"),
                ("first stage mean", s["first_stage_mean"]), ("last stage mean", s["last_stage_mean"])])
        _emit_json(s, as_json)

    @data_app.command("run")
    def run_cmd(config: Path = typer.Argument(..., help="YAML with a data.pipeline section"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value"),
                out: Path = typer.Option(Path("runs/data"), "--out", help="folder for the step outputs")):
        """Run the `data.pipeline` steps of a training config without training."""
        from ..config import load_config
        from ..data.pipeline import run_pipeline

        cfg = _guard(load_config, config, set_ or [])
        new = _guard(run_pipeline, cfg, out, log=lambda m: console.print(m, markup=False))
        console.print(f"train: {new.data.train}" + (f"\neval: {new.data.eval}" if new.data.eval else ""), markup=False)

    @data_app.command("preview")
    def preview_cmd(config: Path = typer.Argument(..., help="training config (YAML)"),
                    set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value"),
                    n: int = typer.Option(3, "--n", min=1, help="samples to show"),
                    as_json: bool = typer.Option(False, "--json", help="one JSON object per sample: text, trained")):
        """The first N training samples as the stage renders them, with the loss-bearing spans marked."""
        from rich.text import Text

        from ..config import load_config
        from ..stages import preview

        cfg = _guard(load_config, config, set_ or [])
        samples = _guard(preview, cfg, n)
        if as_json:
            for smp in samples:
                typer.echo(json.dumps(smp.as_json(), ensure_ascii=False))
            return
        for smp in samples:
            t = Text()
            pos = 0
            for a, b in smp.spans:
                t.append(smp.text[pos:a], style="dim")
                t.append(smp.text[a:b], style="bold green")
                pos = b
            t.append(smp.text[pos:], style="dim")
            console.rule(f"{smp.where}  (green: trained, {len(smp.trained)} of {len(smp.text)} characters)")
            console.print(t)
