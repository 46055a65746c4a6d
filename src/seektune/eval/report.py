"""The run report: report.md and a self-contained report.html in the run (or eval) folder.

Everything comes from files the run already wrote (config.yaml, summary.json, metrics.jsonl,
eval.json), so a report can be rebuilt at any time with `seektune report RUN`. The HTML embeds its
plots as base64 PNG data URIs and its CSS inline: one file to mail or archive. report.md links the
same PNGs from report_files/.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import yaml

METRIC_NAMES = {"rouge_l": "ROUGE-L", "bleu4": "BLEU-4", "exact_match": "exact match %", "perplexity": "perplexity"}
SET_NAMES = {"heldout": "held-out (in-domain)", "general": "general domain (forgetting check)"}
MAX_SAMPLES_SHOWN = 8


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a torn last line (a killed run) is skipped, not fatal."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _load(run_dir: Path) -> dict:
    def js(name):
        p = run_dir / name
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None

    cfgp = run_dir / "config.yaml"
    return {"config": yaml.safe_load(cfgp.read_text(encoding="utf-8")) if cfgp.exists() else None,
            "summary": js("summary.json"), "eval": js("eval.json"), "metrics": read_metrics(run_dir / "metrics.jsonl")}


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------

def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def make_plots(metrics: list[dict], evald: dict | None, curves: list[dict] | None = None) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes). Only plots that have data are made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, tuple[str, bytes]] = {}
    xs, ys = _series(metrics, "loss")
    ex, ey = _series(metrics, "eval_loss")
    if xs or ex:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        if xs:
            ax.plot(xs, ys, label="train loss", color="#1f77b4")
        if ex:
            ax.plot(ex, ey, "o-", label="eval loss", color="#d62728")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3), ax.legend()
        ax.set_title("Loss")
        plots["loss"] = ("Training and eval loss", png_bytes(fig))
    xs, ys = _series(metrics, "lr")
    if xs:
        fig, ax = plt.subplots(figsize=(6, 3.0))
        ax.plot(xs, ys, color="#2ca02c")
        ax.set_xlabel("step"), ax.set_ylabel("learning rate"), ax.grid(alpha=0.3), ax.set_title("Learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        plots["lr"] = ("Learning rate schedule", png_bytes(fig))
    # the stage's own curves, as its summary.json names them (no per-stage code here)
    for i, spec in enumerate(curves or []):
        keys = [k for k in spec.get("keys", []) if _series(metrics, k)[0]]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for k in keys:
            ax.plot(*_series(metrics, k), "o-", ms=3, label=k)
        ax.set_xlabel("step"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
        ax.set_title(spec.get("title", ""))
        plots[f"stage_curve_{i}"] = (spec.get("title", "stage curve"), png_bytes(fig))
    if evald:
        bars = []
        for set_name, r in evald.get("sets", {}).items():
            if "before" in r and "after" in r:
                for k in ("rouge_l", "bleu4"):
                    bars.append((f"{set_name}\n{METRIC_NAMES[k]}", r["before"]["metrics"][k], r["after"]["metrics"][k]))
        if bars:
            fig, ax = plt.subplots(figsize=(6, 3.4))
            idx = range(len(bars))
            ax.bar([i - 0.2 for i in idx], [b[1] for b in bars], width=0.4, label="before (base)", color="#999999")
            ax.bar([i + 0.2 for i in idx], [b[2] for b in bars], width=0.4, label="after (tuned)", color="#1f77b4")
            ax.set_xticks(list(idx), [b[0] for b in bars], fontsize=8)
            ax.set_ylabel("score (0-100)"), ax.grid(alpha=0.3, axis="y"), ax.legend()
            ax.set_title("Before / after")
            plots["before_after"] = ("Before / after on the same records and decoding", png_bytes(fig))
    return plots


# --------------------------------------------------------------------------------------------
# tables (shared by markdown and HTML): lists of rows of cell strings, plus a per-row flag
# --------------------------------------------------------------------------------------------

def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:,.{digits}f}"
    return str(v)


def config_rows(cfg: dict | None, summary: dict | None) -> list[list[str]]:
    if not cfg:
        return []
    m, a, d, t = cfg.get("model", {}), cfg.get("adapter", {}), cfg.get("data", {}), cfg.get("train", {})
    adapter = a.get("method", "?")
    if adapter == "lora":
        adapter += f" (r={a.get('r')}, alpha={a.get('alpha')}, targets={a.get('target_modules')})"
    rows = [["model", f"{m.get('name_or_path')} ({m.get('task')}, {m.get('dtype')})"], ["adapter", adapter],
            ["template", str(d.get("template"))], ["max length", str(d.get("max_length"))],
            ["packing", str(d.get("packing"))],
            ["optimiser", f"lr {t.get('lr')} ({t.get('lr_scheduler')}), batch {t.get('batch_size')} x accum "
                          f"{t.get('grad_accum')}, max_steps {t.get('max_steps')}, epochs {t.get('epochs')}"],
            ["seed", str(t.get("seed"))]]
    if summary:
        tps = (summary.get("details") or {}).get("real_tokens_per_s")
        rows += [["stage", str(summary.get("stage"))],
                 ["trainable parameters", f"{summary.get('trainable_params') or 0:,} of {summary.get('total_params') or 0:,}"],
                 ["steps", str(summary.get("steps"))],
                 ["train time", f"{_fmt(summary.get('train_seconds'), 0)} s on {summary.get('threads')} threads"
                                + (f", {_fmt(tps, 0)} real tokens/s" if tps is not None else "")]]
        if summary.get("resumed_from"):
            rows.append(["resumed from", str(summary["resumed_from"])])
        rows += [[str(k), str(v)] for k, v in summary.get("config_rows") or []]  # a command's own (federate)
    return rows


def data_rows(cfg: dict | None, summary: dict | None) -> list[list[str]]:
    rows = []
    if cfg:
        d = cfg.get("data", {})
        rows += [["train file", str(d.get("train"))], ["eval file", str(d.get("eval") or f"held out {d.get('eval_ratio')} of train")]]
    if summary and summary.get("data"):
        s = summary["data"]
        rows.append(["records", s.get("accounting") or f"read {s.get('read')}, train {s.get('train')}, "
                     f"eval {s.get('eval')}, rejected {s.get('rejected')}"])
        if s.get("truncated") is not None:
            rows.append(["truncated", str(s.get("truncated"))])
        if s.get("train_label_tokens") is not None:
            rows.append(["tokens", f"{s.get('train_label_tokens', 0):,} trained of {s.get('train_tokens', 0):,}"])
        if s.get("replay"):
            r = s["replay"]
            rows.append(["replay", f"{r['samples']} general samples from {r['file']} ({100 * r['share']:.1f}% of samples)"])
    return rows


def comparison_rows(r: dict) -> list[tuple[list[str], bool]]:
    out = []
    for row in r.get("comparison", []):
        rel = row["relative"]
        out.append(([METRIC_NAMES.get(row["metric"], row["metric"]), _fmt(row["before"]), _fmt(row["after"]),
                     f"{row['delta']:+.2f}", f"{100 * rel:+.1f}%" if math.isfinite(rel) else "-"], row["flag"]))
    return out


def single_rows(r: dict) -> list[list[str]]:
    phase = r.get("after") or r.get("before")
    m = phase["metrics"]
    return [[METRIC_NAMES[k], _fmt(m.get(k))] for k in METRIC_NAMES if k in m]


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------

def evidence_rows(summary: dict | None) -> list[list[str]]:
    """The stage's evidence: what it measured before and after training, on the same held-out data."""
    rows = []
    for r in (summary or {}).get("evidence", []):
        if str(r.get("key", "")).startswith("bench/"):
            continue  # the Benchmarks section shows these with their intervals
        b, a = r.get("before"), r.get("after")
        delta = f"{a - b:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"
        rows.append([r["name"], _fmt(b, 4), _fmt(a, 4), delta, f"{r.get('better', 'higher')} is better",
                     str(r.get("n") or "-")])
    return rows


def _ci(m: dict | None) -> str:
    if not m:
        return "-"
    return f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"


def benchmark_rows(bench: dict | None) -> list[list[str]]:
    """One row per benchmark and metric: n, shots, scores with 95% intervals, the paired change, verdict."""
    if not bench:
        return []
    phases = bench.get("phases", {})
    comp = {(c["bench"], c["metric"]): c for c in bench.get("comparison", [])}
    rows = []
    names = list(dict.fromkeys([*phases.get("before", {}), *phases.get("after", {})]))
    for name in names:
        b, a = phases.get("before", {}).get(name), phases.get("after", {}).get(name)
        ref = a or b
        for metric in ref["metrics"]:
            c = comp.get((name, metric))
            change = (f"{c['change']['delta']:+.4f} [{c['change']['low']:+.4f}, {c['change']['high']:+.4f}]"
                      if c else "-")
            rows.append([name, metric, str(ref["n"]), str(ref.get("shots", "-")),
                         _ci(b["metrics"].get(metric)) if b else "-", _ci(a["metrics"].get(metric)) if a else "-",
                         change, c["verdict"] if c else "-"])
    return rows


def benchmark_plot(bench: dict | None) -> bytes | None:
    """Before/after bars with 95% intervals, one group per benchmark (its first metric)."""
    if not bench or not bench.get("phases"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = bench["phases"]
    names = list(dict.fromkeys([*phases.get("before", {}), *phases.get("after", {})]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 3.4))
    width = 0.38
    for j, (phase, color) in enumerate((("before", "#9e9e9e"), ("after", "#1f77b4"))):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(names):
            r = phases.get(phase, {}).get(name)
            if not r:
                continue
            m = r["metrics"][next(iter(r["metrics"]))]
            xs.append(i + (j - 0.5) * width), ys.append(m["value"])
            lo.append(m["value"] - m["low"]), hi.append(m["high"] - m["value"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=color, label=phase)
    ax.set_xticks(range(len(names)), [f"{n}\n{next(iter((phases.get('after') or phases.get('before'))[n]['metrics']))}"
                                      for n in names], fontsize=8)
    ax.set_ylabel("score"), ax.grid(alpha=0.3, axis="y"), ax.legend(), ax.set_title("Benchmarks (95% intervals)")
    return png_bytes(fig)


def stage_sample_rows(summary: dict | None) -> list[list[str]]:
    """Completions a stage kept with their scores (GRPO's held-out replies and their rewards)."""
    out = []
    for smp in ((summary or {}).get("details") or {}).get("samples") or []:
        rewards = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in (smp.get("rewards") or {}).items())
        out.append([str(smp.get("prompt", "")), str(smp.get("reference", "")), str(smp.get("completion", "")), rewards])
    return out


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list, flags: list[bool] | None = None) -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>" if any(header) else ""
    out = [f"<table>{head}<tbody>"]
    for i, row in enumerate(rows):
        cls = ' class="flag"' if flags and flags[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _samples(evald: dict, set_name: str) -> list[dict]:
    r = evald["sets"][set_name]
    after = r.get("after", {}).get("samples", [])
    before = {s["where"]: s["prediction"] for s in r.get("before", {}).get("samples", [])}
    base = after or r.get("before", {}).get("samples", [])
    return [{**s, "before": before.get(s["where"]), "after": s["prediction"] if after else None}
            for s in base[:MAX_SAMPLES_SHOWN]]


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #1f77b4;padding-bottom:.2em} h2{margin-top:1.6em;color:#1f4e79}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f4f8} tr.flag td{color:#b00020;font-weight:bold;background:#fdecea}
.alert{color:#b00020;font-weight:bold;border:1px solid #b00020;background:#fdecea;padding:.6em;border-radius:4px}
.ok{color:#1b5e20} figure{display:inline-block;margin:.5em 1em .5em 0} figcaption{font-size:.85em;color:#555}
img{max-width:520px;border:1px solid #ddd} .samples td{font-size:.9em;white-space:pre-wrap;max-width:260px}
.meta{color:#666;font-size:.9em}
"""


def write_report(run_dir: str | Path, eval_payload: dict | None = None, title: str | None = None,
                 run_files: str | Path | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and report_files/*.png into run_dir; return the two paths.

    run_files: the folder holding config.yaml / summary.json / metrics.jsonl when it is not
    run_dir (an eval folder inside a run)."""
    run_dir = Path(run_dir)
    src = _load(Path(run_files) if run_files else run_dir)
    evald = eval_payload if eval_payload is not None else _load(run_dir)["eval"]
    cfg, summary, metrics = src["config"], src["summary"], src["metrics"]
    plots = make_plots(metrics, evald, (summary or {}).get("curves"))
    for fig in ((summary or {}).get("details") or {}).get("figures", []):
        fp = (Path(run_files) if run_files else run_dir) / fig
        if fp.exists():
            plots.setdefault(Path(fig).stem, (Path(fig).stem.replace("_", " "), fp.read_bytes()))
    files = run_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    for name, (_cap, png) in plots.items():
        (files / f"{name}.png").write_bytes(png)

    title = title or f"seektune report: {run_dir.name}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# {title}", "", f"Run folder `{run_dir}`, written {stamp}.", ""]
    h = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
         f"<p class='meta'>Run folder <code>{html.escape(str(run_dir))}</code>, written {stamp}.</p>"]

    from .benchmarks.results import load_results

    bench = load_results(run_dir)
    bench_png = benchmark_plot(bench)
    if bench_png:
        plots["benchmarks"] = ("Benchmarks before and after, 95% intervals", bench_png)
        (files / "benchmarks.png").write_bytes(bench_png)

    # forgetting alert first: the one thing a reader must not miss
    lost = [c for c in (bench or {}).get("comparison", []) if c.get("forgetting")]
    if lost:
        txt = "; ".join(f"{c['bench']} {c['metric']} {c['before']['value']:.4f} -> {c['after']['value']:.4f} "
                        f"(change 95% [{c['change']['low']:+.4f}, {c['change']['high']:+.4f}])" for c in lost)
        md += [f"> **FORGETTING WARNING**: benchmark loss beyond the noise: {txt}", ""]
        h.append(f"<p class='alert'>Forgetting warning: benchmark loss beyond the noise: {html.escape(txt)}</p>")
    flagged = []
    thr = (evald or {}).get("forgetting_threshold", 0.05)
    if evald and "general" in evald.get("sets", {}):
        flagged = [row for row in evald["sets"]["general"].get("comparison", []) if row["flag"]]
    if flagged:
        txt = "; ".join(f"{METRIC_NAMES[r['metric']]} {_fmt(r['before'])} -> {_fmt(r['after'])} ({100 * r['relative']:+.1f}%)"
                        for r in flagged)
        md += [f"> **FORGETTING WARNING**: general-domain drop larger than {100 * thr:.0f}%: {txt}", ""]
        h.append(f"<p class='alert'>Forgetting warning: general-domain drop larger than {100 * thr:.0f}%: "
                 f"{html.escape(txt)}</p>")

    for heading, rows in (("Configuration", config_rows(cfg, summary)), ("Data", data_rows(cfg, summary))):
        if rows:
            md += [f"## {heading}", "", md_table(["item", "value"], rows), ""]
            h += [f"<h2>{heading}</h2>", _html_table(["", ""], rows)]
    ev_rows = evidence_rows(summary)
    if ev_rows:
        header = ["measure", "before", "after", "change", "direction", "held-out n"]
        md += ["## Before and after", "", md_table(header, ev_rows), ""]
        h += ["<h2>Before and after</h2>", _html_table(header, ev_rows)]
    brows = benchmark_rows(bench)
    if brows:
        header = ["benchmark", "metric", "questions", "shots", "before [95%]", "after [95%]", "change [95%]", "verdict"]
        note = ("Scored by lm-evaluation-harness on local files; the change is paired over the same questions, "
                "and a change whose interval contains 0 is within noise.")
        md += ["## Benchmarks", "", note, "", md_table(header, brows), ""]
        h += ["<h2>Benchmarks</h2>", f"<p>{html.escape(note)}</p>",
              _html_table(header, brows, [r[-1] == "loss" for r in brows])]
    stage_samples = stage_sample_rows(summary)
    if stage_samples:
        header = ["prompt", "reference", "completion", "rewards"]
        md += [f"## Sample completions ({len(stage_samples)} held-out, greedy)", "",
               md_table(header, [[c[:300] for c in row] for row in stage_samples]), ""]
        h += [f"<h2>Sample completions ({len(stage_samples)} held-out, greedy)</h2><div class='samples'>",
              _html_table(header, stage_samples), "</div>"]

    if plots:
        md += ["## Curves", ""]
        h.append("<h2>Curves</h2>")
        for name, (cap, png) in plots.items():
            md += [f"![{cap}](report_files/{name}.png)", ""]
            b64 = base64.b64encode(png).decode()
            h.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>")

    if evald and evald.get("sets"):
        md += ["## Evaluation", "", f"Decoding: {evald.get('describe', '')}.", ""]
        h += ["<h2>Evaluation</h2>", f"<p>Decoding: {html.escape(evald.get('describe', ''))}.</p>"]
        for set_name, r in evald["sets"].items():
            label = SET_NAMES.get(set_name, set_name)
            phase = r.get("after") or r.get("before")
            n = phase["metrics"].get("n")
            sub = f"{label}: {n} records from `{phase.get('source')}`"
            md += [f"### {sub}", ""]
            h.append(f"<h3>{html.escape(sub.replace('`', ''))}</h3>")
            if r.get("comparison"):
                rows = comparison_rows(r)
                header = ["metric", "before (base)", "after (tuned)", "change", "relative"]
                md_rows = [[("**" + c + "** (drop)" if f and i == 0 else c) for i, c in enumerate(row)] for row, f in rows]
                md += [md_table(header, md_rows), ""]
                h.append(_html_table(header, [row for row, _ in rows], [f for _, f in rows]))
                if set_name == "general":
                    ok = not any(f for _, f in rows)
                    rl = next((x for x in r["comparison"] if x["metric"] == "rouge_l"), None)
                    ret = f"retention (ROUGE-L after / before): {100 * rl['after'] / rl['before']:.1f}%" if rl and rl["before"] else ""
                    verdict = (f"No drop larger than {100 * thr:.0f}%." if ok
                               else f"Drop larger than {100 * thr:.0f}% (flagged in red).")
                    md += [f"{ret}. {verdict}".lstrip(". "), ""]
                    h.append(f"<p class='{'ok' if ok else 'alert'}'>{html.escape((ret + '. ' if ret else '') + verdict)}</p>")
            else:
                rows = single_rows(r)
                md += [md_table(["metric", "value"], rows), ""]
                h.append(_html_table(["metric", "value"], rows))
            samples = _samples(evald, set_name)
            if samples:
                cols = ["question", "reference"] + (["before (base)"] if any(s["before"] is not None for s in samples) else []) \
                    + (["after (tuned)"] if any(s["after"] is not None for s in samples) else [])
                rows = []
                for s in samples:
                    row = [s["question"], s["reference"]]
                    if "before (base)" in cols:
                        row.append(s["before"] or "")
                    if "after (tuned)" in cols:
                        row.append(s["after"] or "")
                    rows.append(row)
                md += [f"Sample generations ({len(samples)} shown):", "", md_table(cols, [[c[:300] for c in row] for row in rows]), ""]
                h.append(f"<p>Sample generations ({len(samples)} shown):</p><div class='samples'>"
                         + _html_table(cols, rows) + "</div>")
    h.append("</body></html>")
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path.write_text("\n".join(h), encoding="utf-8")
    return md_path, html_path
