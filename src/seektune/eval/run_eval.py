"""Evaluate causal LMs: generation metrics on an eval set, before/after, forgetting check.

Three entry points:
- `evaluate_set(model, tok, template, eval_set, settings)`: generate, score, keep the samples.
- `RunEvaluator`: used by the training recipe: measures the base model before training and the
  tuned one after, on the held-out split and the optional general-domain set, and saves eval.json.
- `run_eval(target, data, ...)`: the `seektune eval` command: a preset / model folder, a merged
  model, an adapter folder, or a run folder (its final/ adapter on the base named in config.yaml).

Before and after always use the same records and the same decoding settings, so the comparison
measures the fine-tune and nothing else.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.io import DataError, write_jsonl
from ..utils.console import console, log, warn
from .data import EvalSet, heldout_eval_set, load_eval_set
from .generation import GenerationSettings, generate_texts, split_replies
from .metrics import perplexity, text_metrics

EVAL_FILE = "eval.json"
HIGHER_IS_BETTER = {"rouge_l": True, "bleu4": True, "exact_match": True, "perplexity": False}


def evaluate_set(model, tokenizer, template, eval_set: EvalSet, settings: GenerationSettings,
                 with_perplexity: bool = True, label: str = "eval", progress: bool = True,
                 max_length: int = 1024) -> dict:
    """Generate for every item, score against the references; returns metrics + per-sample outputs."""
    t0 = time.time()
    items = eval_set.items
    prompts = [it.prompt for it in items]
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn(f"[bold]generate {label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=len(prompts))
            preds = generate_texts(model, tokenizer, template, prompts, settings,
                                   on_batch=lambda n: bar.advance(task, n))
    else:
        preds = generate_texts(model, tokenizer, template, prompts, settings)
    gen_s = time.time() - t0
    refs = [it.reference for it in items]
    replies = split_replies(preds, template)
    preds = [answer for _, answer in replies]
    metrics = text_metrics(preds, refs)
    if with_perplexity:
        metrics["perplexity"] = perplexity(model, tokenizer, template, [it.conversation for it in items],
                                           max_length=max_length, batch_size=max(1, settings.batch_size // 2))
    metrics["seconds"] = round(time.time() - t0, 2)
    metrics["generation_seconds"] = round(gen_s, 2)
    samples = [{"where": it.where, "question": it.question, "reference": it.reference, "prediction": p,
                **({"reasoning": r} if r is not None else {})} for it, p, (r, _) in zip(items, preds, replies)]
    return {"metrics": metrics, "samples": samples, "source": eval_set.source, "rejected": len(eval_set.rejects)}


def compare(before: dict, after: dict, threshold: float | None = None) -> list[dict]:
    """Rows metric/before/after/delta/relative change; `flag` when a metric got worse by more than
    `threshold` (relative), direction-aware (perplexity going up is a drop)."""
    rows = []
    for k, higher in HIGHER_IS_BETTER.items():
        if k not in before or k not in after:
            continue
        b, a = before[k], after[k]
        if b is None or a is None or (isinstance(b, float) and math.isnan(b)) or (isinstance(a, float) and math.isnan(a)):
            continue
        rel = (a - b) / abs(b) if b else (0.0 if a == b else math.copysign(math.inf, a - b))
        worse = -rel if higher else rel
        rows.append({"metric": k, "before": b, "after": a, "delta": a - b, "relative": rel,
                     "flag": threshold is not None and worse > threshold})
    return rows


@dataclass
class RunEvaluator:
    """Before/after generation eval for a training run (held-out split + optional general set)."""

    cfg: object
    tokenizer: object
    template: object
    run_dir: Path
    sets: dict[str, EvalSet] = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    progress: bool = True

    @classmethod
    def for_run(cls, cfg, tokenizer, template, eval_rows: list[dict], run_dir: Path,
                resume: bool = False, progress: bool = True) -> "RunEvaluator":
        """Eval sets for this run. A fresh run drops an old eval.json; a resumed run keeps its
        "before" measurements (the base model has not changed)."""
        ev = cls(cfg, tokenizer, template, Path(run_dir), progress=progress)
        old = ev.run_dir / EVAL_FILE
        if old.exists():
            if resume:
                prev = json.loads(old.read_text(encoding="utf-8")).get("sets", {})
                ev.results = {k: {"before": v["before"]} for k, v in prev.items() if "before" in v}
            else:
                old.unlink()
        if eval_rows and cfg.eval.generation:
            try:
                ev.sets["heldout"] = heldout_eval_set(cfg.data, eval_rows, limit=cfg.eval.samples)
            except DataError as e:
                warn(f"no generation eval on held-out data: {e}")
        if cfg.eval.general_eval:
            ev.sets["general"] = load_eval_set(cfg.eval.general_eval, "auto", cfg.data.system_prompt,
                                               limit=cfg.eval.general_samples, seed=cfg.train.seed)
        for name, s in ev.sets.items():
            log(f"eval set {name}: {s.summary()}")
        return ev

    @property
    def settings(self) -> GenerationSettings:
        return GenerationSettings.from_eval_config(self.cfg.eval, seed=self.cfg.train.seed,
                                                   max_prompt_tokens=self.cfg.data.max_length)

    def generation_subset(self) -> list:
        """The fixed, small subset the in-training callback generates on (first records of the
        held-out split, so every run of the callback scores the same prompts)."""
        s = self.sets.get("heldout")
        return s.items[: self.cfg.eval.generate_samples] if s else []

    def measure(self, model, phase: str) -> None:
        """phase 'before' (base model) or 'after' (tuned model): every eval set, same settings."""
        for name, s in self.sets.items():
            r = evaluate_set(model, self.tokenizer, self.template, s, self.settings, label=f"{name} {phase}",
                             progress=self.progress, max_length=self.cfg.data.max_length)
            self.results.setdefault(name, {})[phase] = r
            m = r["metrics"]
            log(f"{name} {phase}: ROUGE-L {m['rouge_l']:.2f}, BLEU-4 {m['bleu4']:.2f}, exact match "
                f"{m['exact_match']:.1f}%, perplexity {m.get('perplexity', float('nan')):.2f} "
                f"({m['n']} records, {m['seconds']:.0f}s)")
        self.save()

    def payload(self) -> dict:
        out = {"settings": self.settings.__dict__, "describe": self.settings.describe(),
               "forgetting_threshold": self.cfg.eval.forgetting_threshold, "sets": self.results}
        for name, r in self.results.items():
            if "before" in r and "after" in r:
                thr = self.cfg.eval.forgetting_threshold if name == "general" else None
                r["comparison"] = compare(r["before"]["metrics"], r["after"]["metrics"], thr)
        return out

    def save(self) -> Path:
        p = self.run_dir / EVAL_FILE
        p.write_text(json.dumps(self.payload(), indent=2, ensure_ascii=False, default=_json_default))
        return p

    def flagged(self) -> list[dict]:
        return [row for row in self.results.get("general", {}).get("comparison", []) if row["flag"]]


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return str(o)


# --------------------------------------------------------------------------------------------
# `seektune eval TARGET`
# --------------------------------------------------------------------------------------------

def artifact_model_config(art):
    """The ModelConfig that loads an artifact's model (the base, for adapters)."""
    from ..config import ModelConfig

    if art.kind == "adapter":
        return art.run_cfg.model if art.run_cfg is not None else ModelConfig(name_or_path=art.base_path)
    if art.run_cfg is not None:
        return art.run_cfg.model.model_copy(update={"name_or_path": str(art.path)})
    return ModelConfig(name_or_path=str(art.path))


def artifact_tokenizer(art):
    from ..models.loader import load_tokenizer

    if art.kind == "adapter" and (art.path / "tokenizer_config.json").exists():
        return load_tokenizer(artifact_model_config(art), str(art.path))
    return None


def run_eval(target: str, data: str | None = None, out_dir: str | None = None, base: bool = False,
             general: str | None = None, template_name: str | None = None, samples: int | None = None,
             eval_overrides: dict | None = None, with_perplexity: bool = True, threads: int | None = None) -> dict:
    """Evaluate TARGET on DATA (and GENERAL); with base=True also the base model, for before/after."""
    from ..config import EvalConfig
    from ..data.templates import get_template
    from ..engine.artifacts import resolve
    from ..models.loader import load_model
    from ..utils.threads import configure_threads
    from .report import write_report

    t = resolve(target)
    if t.task != "causal_lm":
        if not data:
            raise DataError("--data FILE is required for classification / NER evaluation")
        if t.run_dir is None:
            raise DataError(f"{target}: classification / NER evaluation needs a seektune run folder "
                            "(config.yaml, labels.json, final/)")
        from .classification import evaluate_run

        return evaluate_run(t.run_dir, data, out_dir)
    configure_threads(threads)
    ev_cfg = t.run_cfg.eval if t.run_cfg else EvalConfig()
    if eval_overrides:
        ev_cfg = ev_cfg.model_copy(update={k: v for k, v in eval_overrides.items() if v is not None})
    seed = t.run_cfg.train.seed if t.run_cfg else 42
    max_len = t.run_cfg.data.max_length if t.run_cfg else 1024
    settings = GenerationSettings.from_eval_config(ev_cfg, seed=seed, max_prompt_tokens=max_len)
    if base and t.kind != "adapter":
        if t.run_cfg is not None:
            base_cfg = t.run_cfg.model
        else:
            raise DataError("--base needs a run folder or an adapter folder (a plain model is its own base)")
    general = general or ev_cfg.general_eval
    sets: dict[str, EvalSet] = {}
    fmt = t.run_cfg.data.format if t.run_cfg else "auto"
    sysp = t.run_cfg.data.system_prompt if t.run_cfg else None
    if data:
        sets["heldout"] = load_eval_set(data, fmt, sysp, limit=samples or ev_cfg.samples)
    elif t.run_cfg is not None:
        sets["heldout"] = _run_heldout(t.run_cfg, samples or ev_cfg.samples)
    if general:
        sets["general"] = load_eval_set(general, "auto", sysp, limit=samples or ev_cfg.general_samples, seed=seed)
    if not sets:
        raise DataError("nothing to evaluate: give --data FILE (or a run folder, whose held-out split is used)")
    for name, s in sets.items():
        log(f"eval set {name}: {s.summary()}")

    model, tok, path = load_model(artifact_model_config(t), tokenizer=artifact_tokenizer(t), log=log)
    tname = template_name or t.template
    template = get_template(tname, tok)
    label = str(t.run_dir or target)
    log(f"target: {label} ({t.kind}); base model {path}; template {template.name}; {settings.describe()}")
    results: dict = {}

    def measure(m, phase):
        for name, s in sets.items():
            r = evaluate_set(m, tok, template, s, settings, with_perplexity, label=f"{name} {phase}", max_length=max_len)
            results.setdefault(name, {})[phase] = r
            mm = r["metrics"]
            log(f"{name} {phase}: ROUGE-L {mm['rouge_l']:.2f}  BLEU-4 {mm['bleu4']:.2f}  EM {mm['exact_match']:.1f}%"
                + (f"  ppl {mm['perplexity']:.2f}" if "perplexity" in mm else "") + f"  ({mm['n']} records)")

    if t.kind == "adapter":
        from peft import PeftModel

        if base:
            measure(model, "before")
        model = PeftModel.from_pretrained(model, str(t.path))
        measure(model, "after")
    elif base:  # a fully fine-tuned / merged run: load its base separately
        measure(model, "after")
        del model
        base_model, _, _ = load_model(base_cfg, tokenizer=tok, log=log)
        measure(base_model, "before")
    else:
        measure(model, "after")

    for name, r in results.items():
        if "before" in r:
            thr = ev_cfg.forgetting_threshold if name == "general" else None
            r["comparison"] = compare(r["before"]["metrics"], r["after"]["metrics"], thr)
    kind = "run" if t.run_dir is not None else t.kind
    payload = {"target": label, "kind": kind, "settings": settings.__dict__, "describe": settings.describe(),
               "forgetting_threshold": ev_cfg.forgetting_threshold, "sets": results}
    # a run's own eval.json (written during training) is never overwritten: CLI results go to RUN/eval
    out = Path(out_dir) if out_dir else (t.run_dir / "eval" if t.run_dir is not None
                                         else Path("runs") / ("eval-" + Path(target).name))
    out.mkdir(parents=True, exist_ok=True)
    (out / EVAL_FILE).write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default))
    for name, r in results.items():
        rows = []
        for phase in ("before", "after"):
            for smp in r.get(phase, {}).get("samples", []):
                rows.append({"set": name, "phase": phase, **smp})
        write_jsonl(out / f"generations_{name}.jsonl", rows)
        rej = [x for s in [sets[name]] for x in s.rejects]
        if rej:
            write_jsonl(out / f"rejects_eval_{name}.jsonl", rej)
    md, html = write_report(out, payload, run_files=t.run_dir)
    log(f"eval results in {out / EVAL_FILE}; report {html}")
    for row in results.get("general", {}).get("comparison", []):
        if row["flag"]:
            console.print(f"[bold red]forgetting:[/] general {row['metric']} {row['before']:.2f} -> {row['after']:.2f} "
                          f"({100 * row['relative']:+.1f}%, threshold {100 * ev_cfg.forgetting_threshold:.0f}%)")
    payload["out_dir"] = str(out)
    return payload


def _run_heldout(cfg, samples: int | None) -> EvalSet:
    """Rebuild the run's held-out split (the tokenised-data cache makes this cheap) and take its records."""
    from ..data.sft import build_sft_data
    from ..data.templates import get_template
    from ..models.loader import load_tokenizer

    tok = load_tokenizer(cfg.model)
    data = build_sft_data(cfg.data, tok, get_template(cfg.data.template, tok), cfg.train.seed, None, log=log)
    return heldout_eval_set(cfg.data, data.eval, limit=samples)
