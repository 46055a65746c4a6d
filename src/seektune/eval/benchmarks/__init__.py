"""Standard benchmarks (CMMLU, GSM8K, your own multiple-choice sets) scored by lm-evaluation-harness.

    specs.py    what a `--bench` string names, as harness task configs on local files
    harness.py  run them on a loaded model or an endpoint; every question's outcome kept
    results.py  benchmarks.json / benchmarks_questions.jsonl, the paired before/after comparison

Entry points: `benchmark_target` (`seektune eval TARGET --bench ...`) and `RunBenchmarks`
(`eval.benchmarks` of a training config: the base before training, the tuned model after).
"""

from __future__ import annotations

from pathlib import Path

from ...utils.console import console, log, warn
from .harness import BenchSettings, endpoint_model, harness_model, run_benchmarks
from .results import BenchmarkResults, compare, load_results
from .specs import Bench, parse

__all__ = ["Bench", "BenchSettings", "BenchmarkResults", "RunBenchmarks", "benchmark_target", "compare",
           "load_results", "parse", "parse_all", "settings_from_eval"]


def parse_all(specs: list[str], eval_cfg, work_dir: Path) -> list[Bench]:
    benches = [parse(s, cmmlu_dir=eval_cfg.cmmlu_dir, gsm8k_file=eval_cfg.gsm8k_file, work_dir=work_dir)
               for s in specs]
    names = [b.name for b in benches]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        from ...data.io import DataError

        raise DataError(f"--bench: {', '.join(dup)} named twice")
    for b in benches:
        for note in b.notes:
            warn(f"benchmark {b.name}: {note}")
    return benches


def settings_from_eval(eval_cfg, seed: int = 0, **overrides) -> BenchSettings:
    s = BenchSettings(shots=eval_cfg.benchmark_shots, limit=eval_cfg.benchmark_limit, seed=seed,
                      batch_size=eval_cfg.benchmark_batch_size, max_gen_tokens=eval_cfg.benchmark_max_tokens,
                      chat_template=eval_cfg.benchmark_chat_template)
    for k, v in overrides.items():
        if v is not None:
            setattr(s, k, v)
    return s


def print_comparison(res: BenchmarkResults) -> None:
    for row in res.comparison():
        c = row["change"]
        line = (f"{row['bench']} {row['metric']}: {row['before']['value']:.4f} -> {row['after']['value']:.4f} "
                f"(change {c['delta']:+.4f}, 95% [{c['low']:+.4f}, {c['high']:+.4f}], {c['n']} questions): {row['verdict']}")
        if row["forgetting"]:
            console.print(f"[bold red]forgetting:[/] {line}")
        else:
            log(line)


def measure_phase(model, tokenizer, benches: list[Bench], settings: BenchSettings, res: BenchmarkResults,
                  phase: str, label: str, progress: bool = True) -> None:
    was_training = getattr(model, "training", False)
    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    model.eval()
    if cfg is not None:
        cfg.use_cache = True  # training with gradient checkpointing turns the KV cache off; generation needs it
    try:
        results, rows = run_benchmarks(harness_model(model, tokenizer, settings), benches, settings,
                                       label=f"{phase} ({label})", progress=progress)
    finally:
        if cfg is not None and use_cache is not None:
            cfg.use_cache = use_cache
        if was_training:
            model.train()
    res.meta["settings"] = settings.__dict__
    res.add(phase, results, rows, model=label)


class RunBenchmarks:
    """`eval.benchmarks` of a training run: measured on the base model before the stage trains and on
    the tuned model after, into the run folder. A resumed run keeps the 'before' it already has."""

    def __init__(self, cfg, run_path: Path, resume: bool, progress: bool = True):
        self.cfg, self.path, self.progress = cfg, Path(run_path), progress
        self.settings = settings_from_eval(cfg.eval, seed=cfg.train.seed)
        self.benches = parse_all(list(cfg.eval.benchmarks), cfg.eval, self.path / "benchmarks")
        self.res = BenchmarkResults.load(self.path) if resume else BenchmarkResults(self.path)

    def before(self) -> None:
        names = [b.name for b in self.benches]
        if self.res.has("before", names):
            log("benchmarks: the base model's scores are already in benchmarks.json (resumed run)")
            return
        from ...models.loader import load_model

        model, tok, path = load_model(self.cfg.model, log=log)
        measure_phase(model, tok, self.benches, self.settings, self.res, "before", f"base {self.cfg.model.name_or_path}",
                      self.progress)
        del model

    def after(self, model, tokenizer) -> list[dict]:
        if model is None:
            from ...engine.artifacts import resolve

            model, tokenizer = load_target(resolve(self.path))
        measure_phase(model, tokenizer, self.benches, self.settings, self.res, "after", f"tuned {self.path.name}",
                      self.progress)
        print_comparison(self.res)
        return self.res.comparison()


def load_target(art):
    """(model, tokenizer) of a resolved artifact: a preset or model folder, a merged run, or base + adapter
    (the model config and tokenizer as `seektune eval` picks them)."""
    from ...models.loader import load_model
    from ..run_eval import artifact_model_config, artifact_tokenizer

    if art.kind == "int8":
        from ...data.io import DataError

        raise DataError(f"{art.path}: an INT8 export is scored through its server: seektune serve {art.path} "
                        "then seektune eval --endpoint http://127.0.0.1:8000 --bench ...")
    model, tok, _ = load_model(artifact_model_config(art), tokenizer=artifact_tokenizer(art), log=log)
    if art.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(art.path))
    return model, tok


def base_of(art):
    """(model, tokenizer) of a merged or fully tuned run's base model, for `--base`; None for a plain model
    (its own base). An adapter's base is the same model with the adapter disabled (no second load)."""
    from ...models.loader import load_model

    if art.run_cfg is not None:
        model, tok, _ = load_model(art.run_cfg.model, log=log)
        return model, tok
    return None


def _tokenizer_folder(name: str | None, out: Path) -> str | None:
    """--tokenizer as a folder the harness can load: a folder as is; a run, model folder or preset through
    seektune's loader, saved under OUT/tokenizer (the harness counts the prompt's tokens with it)."""
    if not name:
        return None
    p = Path(name)
    if p.is_dir() and (p / "tokenizer_config.json").exists():
        return str(p)
    from ...engine.artifacts import resolve
    from ...models.loader import load_tokenizer
    from ..run_eval import artifact_model_config, artifact_tokenizer

    art = resolve(name)
    folder = out / "tokenizer"
    (artifact_tokenizer(art) or load_tokenizer(artifact_model_config(art))).save_pretrained(str(folder))
    return str(folder)


def benchmark_target(target: str, specs: list[str], out_dir: str | None, base: bool, settings: BenchSettings,
                     eval_cfg, endpoint: str | None = None, endpoint_model_name: str | None = None,
                     tokenizer: str | None = None, progress: bool = True) -> BenchmarkResults:
    """`seektune eval TARGET --bench ...`: score TARGET (and with base=True its base) into OUT."""
    from ...engine.artifacts import resolve

    if endpoint:
        out = Path(out_dir or Path("runs") / f"eval-{(endpoint_model_name or 'endpoint').replace('/', '_')}")
        benches = parse_all(specs, eval_cfg, out / "benchmarks")
        res = BenchmarkResults(out)
        lm = endpoint_model(endpoint, endpoint_model_name or target, _tokenizer_folder(tokenizer, out), settings)
        results, rows = run_benchmarks(lm, benches, settings, label=f"endpoint {endpoint}", progress=progress)
        res.meta["settings"] = settings.__dict__
        res.add("after", results, rows, model=f"{endpoint} ({endpoint_model_name or target})")
        return res
    art = resolve(target)
    if art.task != "causal_lm":
        from ...data.io import DataError

        raise DataError(f"{target}: benchmarks score causal language models; this is a {art.task} model")
    out = Path(out_dir) if out_dir else (art.run_dir / "eval" if art.run_dir is not None
                                         else Path("runs") / ("eval-" + Path(target).name))
    benches = parse_all(specs, eval_cfg, out / "benchmarks")
    res = BenchmarkResults(out)
    model, tok = load_target(art)
    label = str(art.run_dir or target)
    if base and art.kind == "adapter":
        with model.disable_adapter():
            measure_phase(model, tok, benches, settings, res, "before", "base (adapter disabled)", progress)
    elif base:
        pair = base_of(art)
        if pair is None:
            from ...data.io import DataError

            raise DataError("--base needs a run folder or an adapter folder (a plain model is its own base)")
        measure_phase(pair[0], pair[1], benches, settings, res, "before", f"base {art.run_cfg.model.name_or_path}",
                      progress)
        del pair
    measure_phase(model, tok, benches, settings, res, "after", label, progress)
    if base:
        print_comparison(res)
    return res
