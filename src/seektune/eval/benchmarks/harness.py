"""Score a loaded model (or an OpenAI-compatible endpoint) on benchmarks with lm-evaluation-harness.

The harness does the scoring (log-likelihood of each option for multiple choice, greedy generation
with its strict and flexible answer filters for GSM8K, its few-shot samplers and prompt formats);
seektune picks the questions (a seeded sample stratified by subject when --limit is below the
total), keeps every question's outcome, and attaches 95% intervals so a change smaller than the
noise is never reported as a gain or a loss.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from dataclasses import asdict, dataclass

from ...data.io import DataError
from ...utils.console import log
from ..intervals import mean_interval
from .specs import Bench

FEWSHOT_SEED = 1234  # the harness's default few-shot seed, so k-shot prompts match its own runs


@dataclass
class BenchSettings:
    """How benchmarks are run; saved with the results so a number can be reproduced."""

    shots: int | None = None          # None: each task's own default (CMMLU 0, GSM8K 5)
    limit: int | None = None          # questions per benchmark (a stratified seeded sample); None: all
    seed: int = 0                     # which questions --limit picks
    batch_size: int = 8
    max_gen_tokens: int = 256         # GSM8K generation budget (the harness's default)
    chat_template: bool = False       # wrap prompts in the tokenizer's chat template (off: as published)


def allocate(sizes: dict[str, int], limit: int | None, seed: int) -> dict[str, list[int]] | None:
    """Question indices per task: all when limit is None or covers everything, else a sample of `limit`
    spread over the tasks in proportion to their sizes (largest remainder, at least one each)."""
    total = sum(sizes.values())
    if limit is None or limit >= total:
        return None
    names = list(sizes)
    quota = {n: max(1, int(limit * sizes[n] / total)) for n in names}
    rema = sorted(names, key=lambda n: (limit * sizes[n] / total) - int(limit * sizes[n] / total), reverse=True)
    i = 0
    while sum(quota.values()) < limit and i < 10 * len(names):
        n = rema[i % len(names)]
        if quota[n] < sizes[n]:
            quota[n] += 1
        i += 1
    while sum(quota.values()) > limit:  # the at-least-one floor overshot: trim the largest
        n = max(quota, key=quota.get)
        quota[n] -= 1
    rng = random.Random(seed)
    return {n: sorted(rng.sample(range(sizes[n]), min(quota[n], sizes[n]))) for n in names if quota[n] > 0}


def _quiet_harness() -> None:
    """The harness logs at INFO/WARNING by default (e.g. that a pre-loaded model ignores model_args)."""
    import lm_eval  # noqa: F401 - its import configures its loggers; ours must come after

    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _NoBars:
    """A harness LM whose request loops show no progress bar (--no-progress, CI logs)."""

    def __init__(self, lm):
        self._lm = lm

    def __getattr__(self, name):
        return getattr(self._lm, name)

    def _call(self, name, requests):
        fn = getattr(self._lm, name)
        quiet = "disable_tqdm" in inspect.signature(fn).parameters
        return fn(requests, disable_tqdm=True) if quiet else fn(requests)

    def loglikelihood(self, requests):
        return self._call("loglikelihood", requests)

    def loglikelihood_rolling(self, requests):
        return self._call("loglikelihood_rolling", requests)

    def generate_until(self, requests):
        return self._call("generate_until", requests)


def harness_model(model, tokenizer, settings: BenchSettings):
    """lm-eval's HF wrapper around an already-loaded model (base, adapter or merged)."""
    _quiet_harness()
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
                max_gen_toks=settings.max_gen_tokens, device=str(next(model.parameters()).device))


def endpoint_model(url: str, model_name: str, tokenizer_path: str | None, settings: BenchSettings):
    """lm-eval's OpenAI-compatible completions client (seektune serve, vLLM, llama.cpp's server ...)."""
    _quiet_harness()
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    base = url.rstrip("/")
    if not base.endswith("/completions"):
        base += "/v1/completions" if not base.endswith("/v1") else "/completions"
    kw = dict(base_url=base, model=model_name, max_gen_toks=settings.max_gen_tokens, num_concurrent=1,
              max_retries=2, batch_size=1)
    if tokenizer_path:
        kw.update(tokenizer_backend="huggingface", tokenizer=tokenizer_path)
    else:
        kw.update(tokenizer_backend=None, tokenized_requests=False)
    return LocalCompletionsAPI(**kw)


def run_benchmarks(lm, benches: list[Bench], settings: BenchSettings, label: str = "",
                   progress: bool = True) -> tuple[dict, list[dict]]:
    """Run every bench on `lm` (a harness LM); returns (results per bench, one row per question)."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    _quiet_harness()
    if not progress:
        lm = _NoBars(lm)
        try:
            import datasets

            datasets.disable_progress_bars()
        except ImportError:  # pragma: no cover
            pass
    results, rows = {}, []
    for b in benches:
        t0 = time.time()
        configs = []
        for t in b.tasks:
            cfg = dict(t.config)
            if settings.shots is not None:
                if settings.shots > 0 and not (cfg.get("fewshot_split") or cfg.get("training_split")):
                    raise DataError(f"--bench {b.spec}: --shots {settings.shots} needs examples to show and "
                                    f"{t.subject} has no dev split" + (" (mcq:FILE:dev=DEV)" if b.spec.startswith("mcq") else ""))
                cfg["num_fewshot"] = settings.shots
            cfg.setdefault("num_fewshot", 0)
            if b.kind == "generate":
                cfg["generation_kwargs"] = {**cfg.get("generation_kwargs", {}), "max_gen_toks": settings.max_gen_tokens}
            configs.append(cfg)
        picks = allocate({t.name: t.size for t in b.tasks}, settings.limit, settings.seed)
        loaded = TaskManager(include_defaults=False).load(configs)
        for task_obj in loaded["tasks"].values():
            task_obj.set_fewshot_seed(seed=FEWSHOT_SEED)
        n_q = sum(len(v) for v in picks.values()) if picks else sum(t.size for t in b.tasks)
        shots = configs[0]["num_fewshot"]
        log(f"benchmark {b.name} {label}: {n_q} questions, {shots}-shot, {len(b.tasks)} task(s)")
        out = evaluate(lm, loaded, samples=picks, bootstrap_iters=0, log_samples=True,
                       apply_chat_template=settings.chat_template, verbosity="ERROR")
        by_subject: dict[str, dict[str, list[float]]] = {}
        logged: list[dict] = []  # one row per question and answer filter
        subj_of = {t.name: t.subject for t in b.tasks}
        file_of = {t.name: t.config["dataset_kwargs"]["data_files"]["test"] for t in b.tasks}
        for task_name, samples in (out or {}).get("samples", {}).items():
            subj = subj_of.get(task_name, task_name)
            for s in samples:
                row = _question_row(b, subj, s, file_of.get(task_name, ""))
                for m in b.metrics:
                    metric, _, flt = m.partition(",")
                    if s.get("filter", "none") == (flt or "none") and metric in s:
                        row[m] = float(s[metric])
                        by_subject.setdefault(subj, {}).setdefault(m, []).append(float(s[metric]))
                logged.append(row)
        merged = _merge_filters(logged, b)
        rows += merged
        allv = {m: [x for subj in by_subject.values() for x in subj.get(m, [])] for m in b.metrics}
        res = {"name": b.name, "spec": b.spec, "kind": b.kind, "shots": shots, "n": len(merged),
               "seconds": round(time.time() - t0, 1), "settings": asdict(settings),
               "metrics": {m: mean_interval(v) for m, v in allv.items()},
               "subjects": ({s: {m: mean_interval(v) for m, v in d.items()} for s, d in sorted(by_subject.items())}
                            if len(b.tasks) > 1 else {}),
               "notes": b.notes, "rejected": b.rejected}
        head = b.metrics[0]
        mi = res["metrics"].get(head, {})
        log(f"benchmark {b.name} {label}: {head} {mi.get('value', float('nan')):.4f} "
            f"[{mi.get('low', float('nan')):.4f}, {mi.get('high', float('nan')):.4f}] on {res['n']} questions "
            f"({res['seconds']:.0f}s)")
        results[b.name] = res
    return results, rows


def _question_row(b: Bench, subject: str, s: dict, test_file: str) -> dict:
    """What one question got: the option picked (choice) or the extracted answer and raw reply (generate)."""
    doc = s.get("doc") or {}
    resp = s.get("filtered_resps")
    row = {"bench": b.name, "subject": subject, "id": f"{subject}:{s.get('doc_id')}",
           # the user's own file:line for mcq (normalised rows keep it); else the record's row in the file
           "where": doc.get("where") or f"{test_file}:row {int(s.get('doc_id', 0)) + 1}", "target": s.get("target"),
           "filter": s.get("filter", "none")}
    if b.kind == "choice" and isinstance(resp, list) and resp and isinstance(resp[0], (list, tuple)):
        lls = [float(x[0]) for x in resp]
        row["pred"] = max(range(len(lls)), key=lls.__getitem__)
        row["loglikelihoods"] = [round(x, 5) for x in lls]
    else:
        row["pred"] = resp[0] if isinstance(resp, list) and resp else resp
        raw = s.get("resps")
        if raw and isinstance(raw[0], list) and raw[0]:
            row["response"] = raw[0][0]
    return row


def _merge_filters(rows: list[dict], b: Bench) -> list[dict]:
    """One row per question: a generate task logs each question once per answer filter."""
    merged: dict[str, dict] = {}
    for r in rows:
        m = merged.setdefault(r["id"], {k: v for k, v in r.items() if k not in ("filter", "pred")})
        m.setdefault("preds", {})[r["filter"]] = r["pred"]
        for k in b.metrics:
            if k in r:
                m[k] = r[k]
    return list(merged.values())
