"""The `seektune` command line. Subcommands follow the pipeline: data -> train -> eval -> export -> serve."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="seektune: fine-tune local language models and DeepSeek models end to end.")
data_app = typer.Typer(no_args_is_help=True, help="Data engineering: inspect, clean, split, balance, augment, mix, curriculum; run a data.pipeline.")
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
    """Fine-tune a model as the YAML config says (train.stage: sft, rm, dpo or ppo)."""
    _quiet_libraries()
    from .config import load_config

    try:
        cfg = load_config(config, set_ or [])
        if cfg.data.pipeline:  # data steps first; the run then trains on their output
            from .data.pipeline import run_pipeline
            from .utils.console import log

            cfg = run_pipeline(cfg, Path(cfg.train.output_dir) / "data", show_progress=not no_progress, log=log)
        if cfg.train.stage != "sft":  # preference alignment: rm, dpo, ppo (docs/alignment.md)
            from .train.align import run_stage

            run_stage(cfg, show_progress=not no_progress)
            return
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
def eval_cmd(target: str = typer.Argument(..., help="run folder or model")):
    """Evaluate a base model, an adapter run or a merged model."""
    _not_yet("eval", 6)


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


from .data.cli import register as _register_data_commands  # noqa: E402

_register_data_commands(data_app)  # inspect, clean, split, balance, augment, curriculum, mix, run


def main() -> None:
    app()


if __name__ == "__main__":
    main()
