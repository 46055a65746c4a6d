"""Thin glue between the CLI and the export/prune modules: argument checks and printed tables."""

from __future__ import annotations

from pathlib import Path

from ..utils.console import console, log
from .measure import markdown_table
from .errors import ExportError

PRUNE_COLUMNS = [("model", "model"), ("params_m", "params (M)"), ("fp32_mb", "fp32 weights (MB)"),
                 ("ms_per_token", "ms / token"), ("ppl", "perplexity")]


def deploy_settings(run: str, config: Path | None, **flags):
    """The `deploy:` section of --config (else of the run's config.yaml, else defaults), then CLI flags."""
    from ..config import ConfigError, DeployConfig, load_config
    from ..engine.artifacts import run_config_of

    if config is not None:
        base = load_config(config).deploy
    else:
        run_cfg = run_config_of(run)
        base = run_cfg.deploy if run_cfg is not None else DeployConfig()
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return DeployConfig.model_validate({**base.model_dump(), **given})
    except ValueError as e:
        raise ConfigError(f"invalid deploy option: {e}") from None


def export_command(run: str, out: Path, d, report: bool, data: Path | None, overwrite: bool) -> None:
    from .merge import export_run

    if report:
        if data is None:
            raise ExportError("--report needs --data FILE (texts for perplexity)")
        from .report import COLUMNS, dtype_table

        rows = dtype_table(run, str(data), Path(out) / "report", eval_samples=d.eval_samples)
        console.print(markdown_table(rows, COLUMNS), markup=False)
        log(f"table saved to {Path(out) / 'report' / 'report.md'}")
        return
    if d.export_format == "gguf":
        clash = [f for f, on in (("--report", report), ("--adapter-only", d.adapter_only), ("--quantize", d.quantize),
                                 ("--dtype", d.export_dtype != "fp32")) if on]
        if clash:
            raise ExportError(f"--format gguf cannot be combined with {', '.join(clash)} (GGUF weights: --quant)")
        from .gguf.pipeline import export_gguf

        export_gguf(run, out, d.gguf_quant or "f16", overwrite=overwrite, verify=d.verify, data=data,
                    eval_samples=d.eval_samples)
        return
    export_run(run, out, d.export_dtype, adapter_only=d.adapter_only, verify=d.verify, quantize=d.quantize,
               overwrite=overwrite)


def prune_command(run: str, out: Path, d, data: Path | None, overwrite: bool) -> None:
    from .prune import prune_run

    rep = prune_run(run, out, d.prune_heads, str(data) if data else None, d.calib_samples, d.eval_samples,
                    overwrite=overwrite, recover_steps=d.recover_steps)
    console.print(markdown_table(rep.rows, PRUNE_COLUMNS), markup=False)
    log(f"pruned {100 * rep.share_removed:.0f}% of query heads ({rep.heads_per_layer} per layer) in "
        f"{rep.seconds:.0f}s; model and prune.json in {rep.out}")
