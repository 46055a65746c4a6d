"""The `seektune` command line. Subcommands follow the pipeline: data -> train -> eval -> export -> serve."""

from __future__ import annotations

import os
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
    from ..utils.console import console

    console.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
    raise typer.Exit(code)


def _user_errors():
    from ..config import ConfigError
    from ..data.io import DataError
    from ..data.templates import TemplateError
    from ..engine.artifacts import ArtifactError
    from ..engine.checkpoint import CheckpointError
    from ..eval.rewards import RewardError
    from ..export.errors import ExportError
    from ..models.adapters import AdapterError
    from ..models.presets import ModelError
    from ..utils.safe_files import UnsafeFileError

    return (ConfigError, DataError, TemplateError, AdapterError, ModelError, ExportError, ArtifactError, RewardError,
            CheckpointError, UnsafeFileError)


def _interrupted(e) -> None:
    """TrainingInterrupted: a checkpoint was saved; say how to continue, exit 128 + the signal number."""
    from ..utils.console import warn

    warn(str(e))
    raise typer.Exit(e.exit_code)


def _reexec_on_allocator(config: Path, overrides: list[str]) -> None:
    """Before anything heavy is imported (all of it would be redone): `train.allocator`."""
    from ..config import load_config
    from ..engine.allocator import reexec_with

    try:
        cfg = load_config(config, overrides)
        reexec_with(cfg.train.allocator, cfg.train.return_freed_memory)
    except _user_errors() as e:  # evaluated only when something was raised
        _fail(str(e))
    except ValueError as e:  # an allocator asked for by name that is not installed
        _fail(str(e))


@app.command()
def train(config: Path = typer.Argument(..., help="YAML run configuration"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value (repeatable)"),
          resume: bool = typer.Option(False, "--resume", help="continue from the newest complete checkpoint"),
          overwrite: bool = typer.Option(False, "--overwrite", help="start over in a folder that holds another run"),
          no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar (logs only)"),
          nproc: int = typer.Option(1, "--nproc", help="processes on this node (launches through torchrun)"),
          nnodes: int = typer.Option(1, "--nnodes", help="number of nodes"),
          node_rank: int = typer.Option(0, "--node-rank", help="rank of this node"),
          master_addr: Optional[str] = typer.Option(None, "--master-addr", help="address of node 0"),
          master_port: int = typer.Option(29500, "--master-port", help="rendezvous port on node 0")):
    """Train as the YAML config says, with the stage train.stage names (seektune stages lists them):
    sft, classify, rm, dpo, ppo. --nproc N runs N processes through torchrun."""
    if nproc == 1 and nnodes == 1:  # a worker (torchrun's too): first onto jemalloc/tcmalloc when installed
        _reexec_on_allocator(config, set_ or [])
    _quiet_libraries()
    from ..config import STAGES, ConfigError, load_config
    from ..utils.console import log

    try:
        cfg = load_config(config, set_ or [])
        if cfg.data.pipeline:  # data steps first (once, before any worker starts); then train on their output
            from ..data.pipeline import run_pipeline

            cfg = run_pipeline(cfg, Path(cfg.train.output_dir) / "data", show_progress=not no_progress, log=log)
        if nproc > 1 or nnodes > 1:
            import signal

            from ..engine.checkpoint import step_of
            from ..engine.launch import launch_torchrun, torchrun_command

            if not STAGES[cfg.train.stage].multi_process:
                raise ConfigError(f"--nproc: stage {cfg.train.stage} runs in one process")
            run_dir = Path(cfg.train.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            launch = run_dir / "launch_config.yaml"  # resolved once, so every rank trains the same config
            cfg.data.pipeline = []
            launch.write_text(cfg.to_yaml(), encoding="utf-8")
            cmd = torchrun_command(str(launch), [], nproc, nnodes, node_rank, master_addr, master_port, resume,
                                   overwrite)
            log("launching: " + " ".join(cmd))
            done = launch_torchrun(cmd)
            if done.signum is not None:  # the workers saved a checkpoint and stopped (or say why not)
                from ..engine.checkpoint import latest_checkpoint
                from ..engine.interrupt import TrainingInterrupted

                ckpt = latest_checkpoint(run_dir / "checkpoints")
                if ckpt is None:
                    _fail(f"{signal.Signals(done.signum).name}: the workers stopped before any checkpoint "
                          "was written; nothing to resume", 128 + done.signum)
                _interrupted(TrainingInterrupted(done.signum, step_of(ckpt), ckpt))
            raise typer.Exit(done.returncode)
        from ..engine.interrupt import TrainingInterrupted
        from ..stages import run_stage

        try:
            run_stage(cfg, resume=resume, overwrite=overwrite, progress=not no_progress)
        except TrainingInterrupted as e:
            _interrupted(e)
    except _user_errors() as e:
        _fail(str(e))
    except KeyboardInterrupt:  # before training began (loading, tokenising): nothing to save yet
        _fail("interrupted before training started; nothing was saved", 130)


@app.command()
def tune(config: Path = typer.Argument(..., help="YAML run configuration with a tune: section"),
         set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value (repeatable)"),
         trials: Optional[int] = typer.Option(None, "--trials", min=1, help="finished trials to reach (default tune.trials)"),
         progress: bool = typer.Option(False, "--progress", help="progress bars inside each trial")):
    """Hyperparameter search (Optuna) over tune.space; resumes its study; best config in OUTPUT_DIR/tune/best.yaml."""
    _quiet_libraries()
    from ..tune import run_tune

    try:
        s = run_tune(config, set_ or [], trials=trials, progress=progress)
    except _user_errors() as e:
        _fail(str(e))
    b = s.get("best")
    typer.echo(f"{s['trials']} trials ({', '.join(f'{v} {k}' for k, v in s['states'].items() if v)}); "
               + (f"best trial {b['trial']}: {s['objective']} = {b['value']:.6g}\nseektune train {b['yaml']}"
                  if b else "no trial completed"))


@app.command()
def federate(config: Path = typer.Argument(..., help="YAML run configuration with a federate: section"),
             simulate: bool = typer.Option(False, "--simulate", help="virtual clients on this machine (Flower's "
                                           "simulation engine); without it, use federate-server/federate-client"),
             clients: Optional[int] = typer.Option(None, "--clients", min=1, help="virtual clients (default federate.clients)"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value (repeatable)"),
             resume: bool = typer.Option(False, "--resume", help="continue after the last saved round"),
             overwrite: bool = typer.Option(False, "--overwrite", help="start over in a folder that holds a federation")):
    """Federated fine-tuning on Flower: each round every sampled site trains federate.local_steps on its own shard,
    only the trained tensors travel, the server averages them (OUTPUT_DIR/rounds/, final/, report)."""
    _quiet_libraries()
    if not simulate:
        _fail("seektune federate runs a simulation (--simulate --clients N); for separate processes start "
              "`seektune federate-server CONFIG` and one `seektune federate-client CONFIG --site NAME --data FILE` per site")
    from ..federated.app import simulate as run_sim

    try:
        s = run_sim(config, set_ or [], clients=clients, resume=resume, overwrite=overwrite)
    except _user_errors() as e:
        _fail(str(e))
    _federation_line(s)


def _federation_line(s: dict) -> None:
    d = s.get("details", {})
    parts = [f"{d.get('rounds_completed')} round(s), {d.get('clients')} client(s)"]
    if d.get("pooled_test", {}).get("eval_loss") is not None:
        parts.append(f"pooled test loss {d['pooled_test']['eval_loss']:.4f}")
    if d.get("pooled_test", {}).get("accuracy") is not None:
        parts.append(f"pooled test accuracy {d['pooled_test']['accuracy']:.4f}")
    if d.get("dp"):
        parts.append(f"epsilon {d['dp']['epsilon']} at delta {d['dp']['delta']}")
    typer.echo("; ".join(parts) + (f"\nglobal model: {s['final']}" if s.get("final") else ""))


@app.command("federate-server")
def federate_server(config: Path = typer.Argument(..., help="YAML run configuration with a federate: section"),
                    address: str = typer.Option("0.0.0.0:9092", "--address", help="host:port to listen on"),
                    clients: Optional[int] = typer.Option(None, "--clients", min=1,
                                                          help="sites to wait for (default federate.clients)"),
                    set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value"),
                    resume: bool = typer.Option(False, "--resume", help="continue after the last saved round"),
                    overwrite: bool = typer.Option(False, "--overwrite", help="start over in a folder that holds a federation"),
                    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="TLS: the CA certificate (PEM)"),
                    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS: this server's certificate (PEM)"),
                    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS: this server's private key (PEM)")):
    """The coordinating server of a real federation (Flower gRPC): waits for the sites, runs the rounds."""
    _quiet_libraries()
    from ..config import load_config
    from ..federated.app import serve

    try:
        given = [x for x in (tls_ca, tls_cert, tls_key) if x is not None]
        if given and len(given) != 3:
            _fail("--tls-ca, --tls-cert and --tls-key go together (TLS needs all three; none = plain gRPC)")
        n = clients or load_config(config, set_ or []).federate.clients
        s = serve(config, set_ or [], address, n, resume=resume, overwrite=overwrite,
                  tls=(str(tls_ca), str(tls_cert), str(tls_key)) if given else None)
    except _user_errors() as e:
        _fail(str(e))
    _federation_line(s)


@app.command("federate-client")
def federate_client(config: Path = typer.Argument(..., help="the federation's YAML configuration"),
                    site: str = typer.Option(..., "--site", help="this site's name in the federation's metrics"),
                    data: Path = typer.Option(..., "--data", help="this site's training file (never leaves it)"),
                    test: Optional[Path] = typer.Option(None, "--test", help="this site's held-out file"),
                    server: str = typer.Option("127.0.0.1:9092", "--server", help="host:port of federate-server"),
                    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="where this site's round runs go "
                                                            "(default OUTPUT_DIR/sites/SITE)"),
                    max_wait: Optional[float] = typer.Option(None, "--max-wait", help="give up connecting after S seconds"),
                    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="TLS: the CA certificate that signed "
                                                          "the server's (PEM); without it, plain gRPC"),
                    set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value")):
    """One site of a real federation: trains on its own files whenever the server samples it."""
    _quiet_libraries()
    from ..federated.app import join

    try:
        join(config, set_ or [], site, str(data), str(test) if test else None, server, work_dir, max_wait, tls_ca)
    except _user_errors() as e:
        _fail(str(e))


@app.command("stages")
def list_stages():
    """List the training stages (train.stage) with their own config section."""
    from ..config import STAGES

    for s in STAGES.values():
        section = f"  [{s.name}: section]" if s.options is not None else ""
        typer.echo(f"{s.name:10s} {s.help}{section}")


@app.command("continue")
def continue_cmd(previous: Path = typer.Argument(..., help="a finished run folder"),
                 data: str = typer.Option(..., "--data", help="the new training data"),
                 out: Optional[Path] = typer.Option(None, "--out", help="run folder (default PREVIOUS-continued)"),
                 eval_data: Optional[str] = typer.Option(None, "--eval", help="eval file for the new data"),
                 replay: float = typer.Option(0.2, "--replay", help="share of each epoch replayed from the previous data"),
                 ewc_lambda: Optional[float] = typer.Option(None, "--ewc-lambda", help="add EWC anchored at the previous run"),
                 threshold: float = typer.Option(0.05, "--threshold", help="alarm when an old metric worsens by more"),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value"),
                 overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier continued run in --out"),
                 no_progress: bool = typer.Option(False, "--no-progress")):
    """Continual fine-tuning: new data into an existing run, with replay, optional EWC and a drift check."""
    _quiet_libraries()
    from ..engine.interrupt import TrainingInterrupted
    from ..stages.continual import continue_run

    try:
        continue_run(previous, data, out, eval_data, replay, ewc_lambda, threshold, set_ or [],
                     show_progress=not no_progress, overwrite=overwrite)
    except TrainingInterrupted as e:
        _interrupted(e)
    except _user_errors() as e:
        _fail(str(e))


@app.command("config")
def show_config(config: Optional[Path] = typer.Argument(None, help="YAML file (defaults when omitted)"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="override: dotted.key=value")):
    """Print the resolved configuration (every key with its value), after the same checks as train."""
    from ..config import ConfigError, load_config
    from ..utils.console import warn

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as e:
        _fail(str(e))
    for note in cfg.notes:
        warn(note)
    typer.echo(cfg.to_yaml())


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="run folder"),
         steps: int = typer.Option(40, help="optimizer steps")):
    """LoRA SFT of SmolLM2-135M-Instruct on medical QA: eval loss and answers before/after (< 5 min on 2 cores)."""
    _quiet_libraries()
    from ..demo import run_demo

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
             threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
             bench: Optional[List[str]] = typer.Option(
                 None, "--bench", help="benchmark (repeatable): cmmlu, cmmlu:SUBJ,SUBJ, gsm8k, gsm8k:FILE, "
                 "mcq:FILE[:dev=FILE][:score=text]"),
             limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                                 help="benchmark questions (a seeded sample stratified by subject)"),
             shots: Optional[int] = typer.Option(None, "--shots", min=0, help="few-shot examples from the dev split"),
             seed: int = typer.Option(0, "--seed", help="which questions --limit samples"),
             chat_template: bool = typer.Option(False, "--chat-template", help="benchmark prompts in the chat template"),
             cmmlu_dir: Optional[Path] = typer.Option(None, "--cmmlu-dir", help="CMMLU folder with test/ and dev/"),
             gsm8k_file: Optional[Path] = typer.Option(None, "--gsm8k-file", help="GSM8K test file"),
             endpoint: Optional[str] = typer.Option(None, "--endpoint",
                                                    help="score a served model instead: base URL of an OpenAI-compatible server"),
             tokenizer: Optional[str] = typer.Option(None, "--tokenizer",
                                                     help="with --endpoint: tokenizer folder (needed for multiple choice)"),
             no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars")):
    """Evaluate a base model, an adapter run or a merged model: ROUGE-L, BLEU-4, exact match, perplexity;
    with --bench, standard benchmarks (lm-evaluation-harness on local files) with 95% intervals."""
    _quiet_libraries()
    from ..eval.run_eval import run_eval

    if bench:
        _bench_cmd(target, bench, out, base, limit, shots, seed, batch_size, max_new_tokens, chat_template,
                   cmmlu_dir, gsm8k_file, endpoint, tokenizer, threads, not no_progress)
        if data is None and general is None:
            return
    elif endpoint:
        _fail("--endpoint scores benchmarks: give --bench too")
    try:
        run_eval(target, str(data) if data else None, str(out) if out else None, base=base,
                 general=str(general) if general else None, template_name=template, samples=samples,
                 eval_overrides={"max_new_tokens": max_new_tokens, "batch_size": batch_size,
                                 "do_sample": sample or None, "temperature": temperature,
                                 "forgetting_threshold": threshold},
                 with_perplexity=not no_ppl, threads=threads)
    except _user_errors() as e:
        _fail(str(e))


def _bench_cmd(target, specs, out, base, limit, shots, seed, batch_size, max_tokens, chat_template, cmmlu_dir,
               gsm8k_file, endpoint, tokenizer, threads, progress):
    from pydantic import ValidationError

    from ..config import EvalConfig
    from ..utils.threads import configure_threads

    try:
        from ..engine.artifacts import ArtifactError, resolve
        from ..eval.benchmarks import benchmark_target, settings_from_eval
        from ..eval.report import write_report

        art = None
        if not endpoint:
            try:
                art = resolve(target)
            except ArtifactError:
                art = None  # benchmark_target names the problem
        run_cfg = art.run_cfg if art is not None else None
        ev = (run_cfg.eval if run_cfg is not None else EvalConfig()).model_copy(update={
            k: str(v) for k, v in (("cmmlu_dir", cmmlu_dir), ("gsm8k_file", gsm8k_file)) if v is not None})
        ev = EvalConfig.model_validate({**ev.model_dump(), "benchmarks": list(specs)})
        configure_threads(threads)
        settings = settings_from_eval(ev, seed=seed, limit=limit, shots=shots, batch_size=batch_size,
                                      max_gen_tokens=max_tokens, chat_template=chat_template or None)
        res = benchmark_target(target, list(specs), str(out) if out else None, base, settings, ev,
                               endpoint=endpoint, endpoint_model_name=target if endpoint else None,
                               tokenizer=tokenizer, progress=progress)
        md, html = write_report(res.folder, {}, run_files=art.run_dir if art is not None else None)
        typer.echo(f"benchmark results: {res.folder / 'benchmarks.json'}\nreport: {html}")
    except _user_errors() as e:
        _fail(str(e))
    except ValidationError as e:  # an unknown --bench kind, named by the validator
        _fail("--bench: " + "; ".join(err["msg"] for err in e.errors()))


@app.command("report")
def report_cmd(run: Path = typer.Argument(..., help="run (or eval) folder")):
    """(Re)build report.md and report.html from a run folder's saved metrics and eval results."""
    from ..eval.report import write_report

    if not run.is_dir():
        _fail(f"{run}: not a folder")
    md, html = write_report(run)
    typer.echo(f"{md}\n{html}")


_DEPLOY_CONFIG = typer.Option(None, "--config", help="YAML whose `deploy:` section sets defaults "
                              "(default: the run's config.yaml)")


@app.command()
def export(run: str = typer.Argument(..., help="run folder, adapter folder, model folder or preset"),
           out: Path = typer.Option(..., "--out", help="export folder"),
           dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | fp16 | bf16 (weights on disk)"),
           adapter_only: Optional[bool] = typer.Option(None, "--adapter-only", help="export the LoRA adapter only"),
           quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write OUT/int8 "
                                                  "(compressed-tensors W8A16: plain transformers and vLLM load it)"),
           report: bool = typer.Option(False, "--report", help="measure size, ms/token and perplexity for "
                                       "fp32/fp16/bf16/int8 into OUT/report (needs --data)"),
           data: Optional[Path] = typer.Option(None, "--data", help="SFT data file for the --report perplexity"),
           no_verify: bool = typer.Option(False, "--no-verify", help="skip the logits check after export"),
           format_: Optional[str] = typer.Option(None, "--format", help="hf (default) | gguf: also a llama.cpp GGUF "
                                                 "+ Ollama Modelfile, checked against the merged model (make gguf-tools)"),
           quant: Optional[str] = typer.Option(None, "--quant", help="GGUF weights with --format gguf: f16 (default) "
                                               "| bf16 | q8_0 | f32 | q4_k_m, q5_k_m, q6_k, ... (llama.cpp's quantizer: make llama-cpp)"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out folder"),
           config: Optional[Path] = _DEPLOY_CONFIG):
    """Merge LoRA into the base and save safetensors + tokenizer + chat template (plain transformers loads it);
    --format gguf adds a GGUF and an Ollama Modelfile."""
    _quiet_libraries()
    from ..export.deploy_cli import deploy_settings, export_command

    try:
        d = deploy_settings(run, config, export_dtype=dtype, adapter_only=adapter_only, quantize=quantize,
                            verify=False if no_verify else None, export_format=format_, gguf_quant=quant)
        export_command(run, out, d, report, data, overwrite)
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def prune(run: str = typer.Argument(..., help="run folder, adapter folder, model folder or preset"),
          out: Path = typer.Option(..., "--out", help="folder for the pruned model"),
          heads: Optional[float] = typer.Option(None, "--heads", help="share of attention heads to remove (0.3)"),
          data: Optional[Path] = typer.Option(None, "--data", help="calibration/eval data (default: the run's data.train)"),
          calib_samples: Optional[int] = typer.Option(None, help="calibration texts for head importance (32)"),
          eval_samples: Optional[int] = typer.Option(None, help="held-out texts for perplexity before/after (32)"),
          recover_steps: Optional[int] = typer.Option(None, help="full-parameter recovery fine-tune steps (0)"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out folder"),
          config: Optional[Path] = _DEPLOY_CONFIG):
    """Remove the least important attention heads (gradient x activation) and save a smaller model."""
    _quiet_libraries()
    from ..export.deploy_cli import deploy_settings, prune_command

    try:
        d = deploy_settings(run, config, prune_heads=heads, calib_samples=calib_samples, eval_samples=eval_samples,
                            recover_steps=recover_steps)
        prune_command(run, out, d, data, overwrite)
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def serve(model: str = typer.Argument(..., help="run folder, model folder, int8 export, preset, or a .gguf file "
                                                 "(served by llama.cpp)"),
          host: Optional[str] = typer.Option(None, help="bind address (127.0.0.1)"),
          port: Optional[int] = typer.Option(None, help="port (8000)"),
          api_key: Optional[str] = typer.Option(None, "--api-key", help="require this key (or set SEEKTUNE_API_KEY)"),
          max_batch: Optional[int] = typer.Option(None, help="largest dynamic batch; 1 turns batching off (16)"),
          batch_window_ms: Optional[float] = typer.Option(None, help="how long a batch waits for more requests (10)"),
          queue_size: Optional[int] = typer.Option(None, help="waiting requests before 503 (256)"),
          max_tokens: Optional[int] = typer.Option(None, help="largest max_tokens a request may ask for (512)"),
          max_prompt_tokens: Optional[int] = typer.Option(None, help="longest prompt a request may send, in tokens "
                                                          "(default: the model's context length)"),
          max_body_bytes: Optional[int] = typer.Option(None, help="largest request body; larger ones get 413 (1048576)"),
          model_name: Optional[str] = typer.Option(None, help="id served in /v1/models (default: folder name)"),
          threads: Optional[int] = typer.Option(None, help="CPU threads (torch's, or llama.cpp's for a .gguf)"),
          template: Optional[str] = typer.Option(None, "--template", help="chat template (default: the run's, else auto)"),
          engine: str = typer.Option("auto", "--engine", help="auto (vLLM where it is installed and a CUDA GPU is "
                                     "visible, else hf) | hf (transformers, continuous batching) | vllm (pip install "
                                     "vllm); a .gguf is always llama.cpp's"),
          gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization",
                                                                 help="vLLM: share of GPU memory it takes (0.9)"),
          max_model_len: Optional[int] = typer.Option(None, "--max-model-len",
                                                      help="vLLM: context length it allocates (default: the model's)"),
          config: Optional[Path] = _DEPLOY_CONFIG):
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models) with dynamic batching;
    vLLM decodes where it is installed and a GPU is visible (--engine); a .gguf file is served through llama.cpp
    with the same API."""
    _quiet_libraries()
    from ..export.deploy_cli import deploy_settings
    from ..serve.server import ServeOptions, run_server

    try:
        d = deploy_settings(model, config, host=host, port=port, max_batch=max_batch, batch_window_ms=batch_window_ms,
                            queue_size=queue_size, max_tokens=max_tokens, model_name=model_name,
                            max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes)
        run_server(model, d.host, d.port, ServeOptions(max_batch=d.max_batch, window_ms=d.batch_window_ms,
                                                       queue_size=d.queue_size, max_tokens=d.max_tokens,
                                                       max_prompt_tokens=d.max_prompt_tokens,
                                                       max_body_bytes=d.max_body_bytes,
                                                       api_key=api_key, model_name=d.model_name, threads=threads,
                                                       template=template, engine=engine,
                                                       gpu_memory_utilization=gpu_memory_utilization,
                                                       max_model_len=max_model_len))
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def ui(host: str = typer.Option("127.0.0.1", help="bind address; a non-local one needs --auth"),
       port: int = typer.Option(7860, min=1, max=65535, help="port"),
       auth: Optional[str] = typer.Option(None, "--auth", help="require this login: user:pass"),
       workspace: Path = typer.Option(Path("."), "--workspace", help="the only folder the UI reads and writes "
                                      "(runs in WORKSPACE/runs)")):
    """Web UI (Gradio): data, train, runs, chat, export. Localhost only unless --host with --auth; no telemetry."""
    from ..ui.access import AccessError, check_binding

    try:
        check_binding(host, auth)
    except AccessError as e:
        _fail(str(e))
    _quiet_libraries()
    try:
        import gradio  # noqa: F401
    except ImportError:
        _fail("the UI needs gradio: pip install 'seektune[ui]'")
    from ..ui.app import launch
    from ..ui.workspace import WorkspaceError

    try:
        launch(workspace, host, port, auth)
    except WorkspaceError as e:
        _fail(str(e))


@app.command("models")
def list_models():
    """List the built-in model presets (no hub needed)."""
    from ..models.presets import PRESETS

    for k, v in PRESETS.items():
        typer.echo(f"{k:24s} {v}")


from .data import register as _register_data_commands  # noqa: E402

_register_data_commands(data_app)  # inspect, clean, split, balance, augment, curriculum, mix, run


@data_app.command("check-iob")
def data_check_iob(file: Path = typer.Argument(..., help="tagged file: CoNLL token<TAB>tag, span JSON or tokens+tags JSONL"),
                   against: Optional[Path] = typer.Option(None, "--against", help="second annotator's file"),
                   scheme: str = typer.Option("bio", help="bio (IOB2), iob (IOB1) or iobes"),
                   threshold: float = typer.Option(0.98, help="pass when the gate metric reaches this"),
                   gate: str = typer.Option("f1", help="agreement metric gated: f1 (entity), kappa or agreement"),
                   types: Optional[str] = typer.Option(None, help="comma-separated allowed entity types"),
                   strip_digits: bool = typer.Option(False, "--strip-digits", help="strip Weibo-style digits"),
                   report: Optional[Path] = typer.Option(None, help="write the full report (JSON) here"),
                   show: int = typer.Option(20, help="issues and disagreements to print")):
    """Annotation QC: invalid tags/transitions with file:line; with --against, kappa and entity F1."""
    from ..data.iob_check import check_iob
    from ..data.iob_report import print_report

    try:
        rep = check_iob(file, against, scheme, threshold, gate,
                        [t.strip() for t in types.split(",")] if types else None, strip_digits)
    except _user_errors() as e:
        _fail(str(e))
    print_report(rep, show, report)
    raise typer.Exit(0 if rep.passed else 1)


@data_app.command("convert-german-credit")
def data_convert_german_credit(src: Path = typer.Argument(..., help="UCI german.data"),
                               out: Path = typer.Argument(..., help="CSV to write (text,label)")):
    """UCI German credit codes -> text phrases from the codebook, label good/bad."""
    from ..data.german_credit import convert_german_credit

    try:
        res = convert_german_credit(src, out)
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(f"wrote {res['rows']} rows to {res['out']} (labels: {res['labels']})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
