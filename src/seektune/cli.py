"""The `seektune` command line. Subcommands follow the pipeline: data -> train -> eval -> export -> serve."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="seektune: fine-tune local language models and DeepSeek models end to end.")
data_app = typer.Typer(no_args_is_help=True, help="Data engineering: inspect, clean, balance, split, augment, mix.")
app.add_typer(data_app, name="data")


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(msg: str, code: int = 2) -> None:
    from .utils.console import console

    console.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
    raise typer.Exit(code)


def _user_errors():
    from .config import ConfigError
    from .data.io import DataError
    from .data.templates import TemplateError
    from .models.adapters import AdapterError
    from .models.presets import ModelError

    return (ConfigError, DataError, TemplateError, AdapterError, ModelError)


def _not_yet(what: str, issue: int) -> None:
    _fail(f"`seektune {what}` is not yet available (tracked in issue {issue})", code=3)


@app.command()
def train(config: Path = typer.Argument(..., help="YAML run configuration"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value (repeatable)"),
          resume: bool = typer.Option(False, "--resume", help="continue from the newest complete checkpoint"),
          no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar (logs only)")):
    """Fine-tune a model as the YAML config says (stage sft)."""
    _quiet_libraries()
    from .config import load_config

    try:
        cfg = load_config(config, set_ or [])
        if cfg.model.task != "causal_lm":
            _not_yet(f"train with model.task={cfg.model.task}", 5)
        from .train.sft import run_sft

        run_sft(cfg, resume=resume, show_progress=not no_progress)
    except _user_errors() as e:
        _fail(str(e))


@app.command("config")
def show_config(config: Optional[Path] = typer.Argument(None, help="YAML file (defaults when omitted)"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value")):
    """Print the resolved configuration (every key with its value)."""
    from .config import ConfigError, load_config

    try:
        typer.echo(load_config(config, set_ or []).to_yaml())
    except ConfigError as e:
        _fail(str(e))


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="run folder"),
         steps: int = typer.Option(40, help="optimizer steps")):
    """LoRA SFT of SmolLM2-135M-Instruct on medical QA: eval loss and answers before/after (< 5 min on 2 cores)."""
    _quiet_libraries()
    from .demo import run_demo

    try:
        run_demo(out, steps)
    except _user_errors() as e:
        _fail(str(e))


@app.command("eval")
def eval_cmd(target: str = typer.Argument(..., help="run folder, adapter folder, merged model folder or preset"),
             data: Optional[Path] = typer.Option(None, "--data", help="eval file (default for a run: its held-out split)"),
             base: bool = typer.Option(False, "--base", help="also evaluate the base model: before/after table"),
             general: Optional[Path] = typer.Option(None, "--general", help="general-domain file for the forgetting check"),
             out: Optional[Path] = typer.Option(None, "--out", help="folder for eval.json and the report (default: RUN/eval, or runs/eval-NAME)"),
             samples: Optional[int] = typer.Option(None, "--samples", min=1, help="records per eval set (default eval.samples)"),
             max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
             batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="generation batch (bounds memory)"),
             sample: bool = typer.Option(False, "--sample", help="sample instead of greedy decoding"),
             temperature: Optional[float] = typer.Option(None, "--temperature", min=0.01),
             threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=0.99,
                                                       help="forgetting flag: relative drop (default 0.05)"),
             template: Optional[str] = typer.Option(None, "--template", help="chat template (default: the run's, else auto)"),
             no_ppl: bool = typer.Option(False, "--no-ppl", help="skip perplexity on the references"),
             threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads")):
    """Evaluate a base model, an adapter run or a merged model: ROUGE-L, BLEU-4, exact match, perplexity."""
    _quiet_libraries()
    from .eval.run_eval import run_eval

    try:
        run_eval(target, str(data) if data else None, str(out) if out else None, base=base,
                 general=str(general) if general else None, template_name=template, samples=samples,
                 eval_overrides={"max_new_tokens": max_new_tokens, "batch_size": batch_size,
                                 "do_sample": sample or None, "temperature": temperature,
                                 "forgetting_threshold": threshold},
                 with_perplexity=not no_ppl, threads=threads)
    except _user_errors() as e:
        _fail(str(e))


@app.command("report")
def report_cmd(run: Path = typer.Argument(..., help="run (or eval) folder")):
    """(Re)build report.md and report.html from a run folder's saved metrics and eval results."""
    from .eval.report import write_report

    if not run.is_dir():
        _fail(f"{run}: not a folder")
    md, html = write_report(run)
    typer.echo(f"{md}\n{html}")


@app.command()
def export(run: str = typer.Argument(..., help="run folder")):
    """Merge and export adapters, quantise, prune."""
    _not_yet("export", 9)


@app.command()
def serve(model: str = typer.Argument(..., help="model folder or run")):
    """OpenAI-compatible HTTP server with dynamic batching."""
    _not_yet("serve", 9)


@app.command("models")
def list_models():
    """List the built-in model presets (no hub needed)."""
    from .models.presets import PRESETS

    for k, v in PRESETS.items():
        typer.echo(f"{k:24s} {v}")


@data_app.command("inspect")
def data_inspect(file: Path):
    """Counts, format, encoding, lengths, labels, duplicates."""
    _not_yet("data inspect", 4)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
