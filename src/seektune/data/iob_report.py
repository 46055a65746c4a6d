"""Print an annotation QC report (rich) and optionally write it as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.console import console
from .iob_check import CheckReport


def print_report(rep: CheckReport, show: int = 20, path: Path | None = None) -> None:
    console.print(f"[bold]{rep.file}[/]: {rep.sentences} sentences, {rep.tokens} tokens, {rep.entities} entities "
                  f"({rep.scheme.upper()})")
    counts = rep.issue_counts()
    if counts:
        console.print("issues: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for i in rep.issues[:show]:
            console.print(f"  {i}", markup=False)
        if len(rep.issues) > show:
            console.print(f"  ... {len(rep.issues) - show} more" + (f" (all in {path})" if path else ""))
    else:
        console.print("issues: none")
    a = rep.agreement
    if a is not None:
        console.print(f"agreement with {rep.against}: {a['sentences_compared']} sentences, {a['tokens']} tokens; "
                      f"token agreement {a['token_agreement']:.4f}, Cohen's kappa {a['kappa']:.4f}; entities "
                      f"P {a['entity_precision']:.4f} R {a['entity_recall']:.4f} F1 {a['entity_f1']:.4f} "
                      f"({a['entities_matched']} matched of {a['entities_a']} / {a['entities_b']})")
        for d in a["disagreements"][:show]:
            console.print(f"  sentence {d['sentence']} (lines {d['line_a']} / {d['line_b']}) {d['token']!r}: "
                          f"{d['a']} vs {d['b']}", markup=False)
        if len(a["disagreements"]) > show:
            console.print(f"  ... {a['disagreeing_tokens'] - show} more disagreeing tokens")
        value = {"f1": a["entity_f1"], "kappa": a["kappa"], "agreement": a["token_agreement"]}[rep.gate]
        console.print(f"gate: {rep.gate} {value:.4f} vs threshold {rep.threshold}")
    verdict = "[bold green]PASS[/]" if rep.passed else "[bold red]FAIL[/]"
    console.print(verdict)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rep.as_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
