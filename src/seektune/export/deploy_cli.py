"""Thin glue between the CLI and the export/prune modules: argument checks and printed tables."""

from __future__ import annotations

from pathlib import Path

from ..utils.console import console, log
from .measure import markdown_table
from .source import ExportError

PRUNE_COLUMNS = [("model", "model"), ("params_m", "params (M)"), ("fp32_mb", "fp32 weights (MB)"),
                 ("ms_per_token", "ms / token"), ("ppl", "perplexity")]


def export_command(run: str, out: Path, dtype: str, adapter_only: bool, quantize: str | None, report: bool,
                   data: Path | None, verify: bool, overwrite: bool) -> None:
    from .merge import export_run

    if report:
        if data is None:
            raise ExportError("--report needs --data FILE (texts for perplexity)")
        from .report import COLUMNS, dtype_table

        rows = dtype_table(run, str(data), Path(out) / "report")
        console.print(markdown_table(rows, COLUMNS), markup=False)
        log(f"table saved to {Path(out) / 'report' / 'report.md'}")
        return
    export_run(run, out, dtype, adapter_only=adapter_only, verify=verify, quantize=quantize, overwrite=overwrite)


def prune_command(run: str, heads: float, out: Path, data: Path | None, calib: int, evals: int,
                  recover_steps: int, overwrite: bool) -> None:
    from .prune import prune_run

    rep = prune_run(run, out, heads, str(data) if data else None, calib, evals, overwrite=overwrite,
                    recover_steps=recover_steps)
    console.print(markdown_table(rep.rows, PRUNE_COLUMNS), markup=False)
    log(f"pruned {100 * rep.share_removed:.0f}% of query heads ({rep.heads_per_layer} per layer) in "
        f"{rep.seconds:.0f}s; model and prune.json in {rep.out}")
