"""What a study leaves in <train.output_dir>/tune/: trials.csv and trials.md (params, objective, state,
time), best.yaml (the best trial's config, reproducible with `seektune train`), plots (optimisation
history, parameter importances, parallel coordinates), report.md / report.html, and, with
tune.test_data, the baseline's and the best trial's scores on a test split no trial saw."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import yaml

from ..config import validate_config
from ..eval.report import md_table, png_bytes
from ..utils.console import log, warn
from .space import on_edge, with_params

BEST_YAML = "best.yaml"


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "seconds": t.user_attrs.get("seconds"), "steps": t.user_attrs.get("steps"),
                     "pruned_at": t.user_attrs.get("pruned_at"), "baseline": bool(t.user_attrs.get("baseline")),
                     "error": t.user_attrs.get("error"), "run_dir": t.user_attrs.get("run_dir"), **t.params})
    return rows


def write_best_yaml(run, study) -> Path:
    """The base config with the best trial's values, training into <out>/tune/best_run."""
    best = study.best_trial
    data = with_params(run.data, best.params, str(run.folder / "best_run"))
    cfg = validate_config(data, f"{run.source} (best trial {best.number})")
    dumped = yaml.safe_load(cfg.to_yaml())
    dumped.pop("tune", None)
    p = run.folder / BEST_YAML
    head = (f"# seektune tune: best of {len(study.trials)} trials, trial {best.number}, "
            f"{run.cfg.tune.objective} = {best.value:.6g}\n# seektune train {p}\n")
    p.write_text(head + yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return p


def plots(study) -> dict[str, bytes]:
    """Optuna's own matplotlib plots; those that need more trials than the study has are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    from optuna.visualization import matplotlib as ovm

    out = {}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    makers = {"history": ovm.plot_optimization_history}
    if len(complete) >= 2 and len(study.trials[0].params) >= 1:
        makers["importances"] = ovm.plot_param_importances
        makers["parallel_coordinates"] = ovm.plot_parallel_coordinate
    for name, fn in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = fn(study)
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            out[name] = png_bytes(fig)
        except Exception as e:  # noqa: BLE001 - a plot must not cost the study's results
            warn(f"tune: no {name} plot ({type(e).__name__}: {e})")
    return out


def score_on_test(run_dir: str, test: str, out: Path) -> dict:
    """A finished trial's final model on the test file: classification/NER metrics, or generation
    metrics and perplexity for a causal LM."""
    import yaml as _y

    cfg = _y.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    task = (cfg.get("model") or {}).get("task", "causal_lm")
    if task != "causal_lm":
        from ..eval.classification import evaluate_run, summary_metrics

        m = evaluate_run(run_dir, test, out)["metrics"]
        # accuracy, macro F1 and, for NER, seqeval entity P/R/F1 (the score NER is judged by)
        return {k: v for k, v in summary_metrics(task, m).items() if k != "majority_baseline"}
    from ..eval.run_eval import run_eval

    r = run_eval(run_dir, test, str(out))
    return {k: v for k, v in r["sets"]["heldout"]["after"]["metrics"].items() if isinstance(v, (int, float))}


def finish(run, study) -> dict:
    """Write every output of the study; returns the summary (also tune/summary.json)."""
    folder = run.folder
    rows = trial_rows(study)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(folder / "trials.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    states = {s: sum(1 for r in rows if r["state"] == s) for s in ("complete", "pruned", "fail", "running")}
    summary = {"study": study.study_name, "storage": run.cfg.tune.storage or "sqlite (tune/study.db)",
               "objective": run.cfg.tune.objective, "direction": study.direction.name.lower(), "trials": len(rows),
               "states": states, "best": None, "baseline": None, "warnings": [], "test": {}}
    pruned = [r for r in rows if r["state"] == "pruned"]
    full = [r for r in rows if r["state"] == "complete" and r["seconds"]]
    if pruned and full:
        mean_full = sum(r["seconds"] for r in full) / len(full)
        saved = sum(max(0.0, mean_full - (r["seconds"] or 0)) for r in pruned)
        summary["pruning"] = {"pruned": len(pruned), "mean_complete_s": round(mean_full, 1),
                              "seconds_saved": round(saved, 1)}
    hours = sum(r["seconds"] or 0 for r in rows) / 3600
    summary["trials_per_hour"] = round(len([r for r in rows if r["state"] != "running"]) / hours, 2) if hours else None
    if states["complete"]:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "run_dir": best.user_attrs.get("run_dir"), "yaml": str(write_best_yaml(run, study))}
        summary["warnings"] += on_edge(run.cfg.tune.space, best.params)
        base = next((r for r in rows if r["baseline"]), None)
        if base:
            summary["baseline"] = {"trial": base["trial"], "value": base["value"], "state": base["state"]}
        if run.cfg.tune.test_data:
            for label, tr in (("baseline", base), ("best", {"run_dir": best.user_attrs.get("run_dir"),
                                                            "trial": best.number, "state": "complete"})):
                if tr and tr["state"] == "complete" and tr.get("run_dir"):
                    summary["test"][label] = {"trial": tr["trial"], **score_on_test(
                        tr["run_dir"], run.cfg.tune.test_data, folder / f"test_{label}")}
    for w_ in summary["warnings"]:
        warn(w_)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    write_report(folder, summary, rows, plots(study))
    return summary


def _md_table(header, rows) -> str:
    """The report's markdown table, an empty cell for a missing value (a trial that never got one)."""
    return md_table(header, [["" if c is None else c for c in r] for r in rows])


def write_report(folder: Path, summary: dict, rows: list[dict], pngs: dict[str, bytes]) -> None:
    params = list(dict.fromkeys(k for r in rows for k in r if "." in k))  # the searched keys are dotted
    header = ["trial", "state", summary["objective"], "seconds", "pruned at"] + params
    table = [[str(r["trial"]) + (" (baseline)" if r["baseline"] else ""), r["state"],
              f"{r['value']:.6g}" if isinstance(r["value"], float) else "-", r["seconds"], r["pruned_at"]]
             + [f"{r.get(p):.4g}" if isinstance(r.get(p), float) else r.get(p) for p in params] for r in rows]
    b = summary.get("best") or {}
    md = [f"# seektune tune: {summary['study']}", "",
          f"Objective `{summary['objective']}` ({summary['direction']}); {summary['trials']} trials: "
          + ", ".join(f"{v} {k}" for k, v in summary["states"].items() if v) + ".", ""]
    if b:
        md += [f"**Best**: trial {b['trial']}, {summary['objective']} = {b['value']:.6g}; `seektune train {b['yaml']}`.", ""]
    if summary.get("baseline") and summary["baseline"].get("value") is not None:
        md += [f"Baseline (the config's own values): trial {summary['baseline']['trial']}, "
               f"{summary['objective']} = {summary['baseline']['value']:.6g}.", ""]
    if summary.get("pruning"):
        p = summary["pruning"]
        md += [f"Pruning stopped {p['pruned']} trials early, about {p['seconds_saved']:.0f} s saved "
               f"(a complete trial took {p['mean_complete_s']:.0f} s on average).", ""]
    if summary.get("test"):
        measures = sorted({k for v in summary["test"].values() for k in v if k != "trial"})
        md += ["## Held-out test (no trial saw it)", "",
               _md_table(["config", "trial"] + measures,
                         [[k, v["trial"]] + [f"{v[m]:.4f}" if isinstance(v.get(m), float) else v.get(m) for m in measures]
                          for k, v in summary["test"].items()]), ""]
    for w in summary["warnings"]:
        md += [f"> **warning**: {w}", ""]
    md += ["## Trials", "", _md_table(header, table), ""]
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>seektune tune</title></head><body>",
         "<pre>" + html.escape("\n".join(md)) + "</pre>"]
    files = folder / "report_files"
    files.mkdir(exist_ok=True)
    for name, png in pngs.items():
        (files / f"{name}.png").write_bytes(png)
        md += [f"![{name}](report_files/{name}.png)", ""]
        h.append(f"<figure><img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                 f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>")
    h.append("</body></html>")
    (folder / "trials.md").write_text(_md_table(header, table) + "\n", encoding="utf-8")
    (folder / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (folder / "report.html").write_text("\n".join(h), encoding="utf-8")
    log(f"tune: report {folder / 'report.html'}")
