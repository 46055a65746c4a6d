"""`seektune demo`: LoRA SFT of SmolLM2-135M-Instruct on bilingual medical QA, with evidence.

Shows eval loss and two generated answers before and after training, in a few minutes on a
2-core CPU. Uses real data from ../shared/data when present (Huatuo zh + ChatDoctor en slices),
otherwise the small sample shipped with seektune (written for the project).
"""

from __future__ import annotations

import json
import random
from pathlib import Path


from .config import Config
from .data.io import read_records, write_jsonl
from .utils.console import console, log

SAMPLE = Path(__file__).parent / "assets" / "medical_qa_sample.jsonl"


def _shared_data_dir() -> Path | None:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        d = root.parent / "shared" / "data" / "sft"
        if (d / "huatuo_med_zh.alpaca.jsonl").exists() and (d / "chatdoctor5k_en.alpaca.json").exists():
            return d
    return None


def _short(recs, max_chars: int, n: int, seed: int) -> list[dict]:
    ok = [r.data for r in recs if 8 <= len(r.data.get("output", "")) <= max_chars
          and len(r.data.get("instruction", "") + r.data.get("input", "")) <= 300]
    random.Random(seed).shuffle(ok)
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in ok[:n]]


def demo_data(out: Path, seed: int = 0) -> tuple[Path, Path, str]:
    """Write train/eval JSONL for the demo; return their paths and a description of the source."""
    shared = _shared_data_dir()
    if shared is not None:
        zh = _short(read_records(shared / "huatuo_med_zh.alpaca.jsonl"), 160, 130, seed)
        en = _short(read_records(shared / "chatdoctor5k_en.alpaca.json"), 360, 130, seed)
        ev = zh[:8] + en[:8]
        tr = zh[8:] + en[8:]
        source = f"{shared} (Huatuo zh + ChatDoctor en, {len(tr)} train / {len(ev)} eval)"
    else:
        rows = [r.data for r in read_records(SAMPLE)]
        ev, tr = rows[:10], rows[10:]
        source = f"shipped sample {SAMPLE.name} ({len(tr)} train / {len(ev)} eval)"
    random.Random(seed).shuffle(tr)
    write_jsonl(out / "data" / "train.jsonl", tr)
    write_jsonl(out / "data" / "eval.jsonl", ev)
    return out / "data" / "train.jsonl", out / "data" / "eval.jsonl", source


def demo_config(out: Path, train: Path, eval_: Path, steps: int) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"train": str(train), "eval": str(eval_), "max_length": 256, "packing": True},
        "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 2, "lr": 5e-4, "min_lr": 5e-5,
                  "warmup_steps": 3, "logging_steps": 5, "seed": 0},
        # the demo shows its own two answers before/after; the full generation eval is `seektune eval`
        "eval": {"before_after": False, "report": True},
    })


def _answer(model, tok, template, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers through the evaluation's batched generator (left padding, stops at end of turn)."""
    from .eval.generation import GenerationSettings, generate_texts

    return [a.strip() for a in generate_texts(model, tok, template, [[{"role": "user", "content": p}] for p in prompts],
                                              GenerationSettings(max_new_tokens=max_new_tokens))]


def run_demo(out: Path, steps: int = 40) -> dict:
    from rich.table import Table

    from .data.templates import get_template
    from .engine.summary import evidence_value
    from .models.loader import load_model
    from .stages import run_stage
    from .utils.threads import configure_threads

    out = Path(out)
    train, eval_, source = demo_data(out)
    log(f"demo data: {source}")
    cfg = demo_config(out, train, eval_, steps)
    configure_threads(None)
    eval_rows = [r.data for r in read_records(eval_)]
    prompts = [eval_rows[0], eval_rows[-1]]
    prompt_text = [(p["instruction"] + ("\n" + p["input"] if p.get("input") else "")).strip() for p in prompts]

    base, tok, _ = load_model(cfg.model, log=log)
    template = get_template(cfg.data.template, tok)
    log("generating two answers with the base model ...")
    before = _answer(base, tok, template, prompt_text)
    del base

    result = run_stage(cfg, overwrite=True)  # the demo owns its folder: a second `make demo` starts over
    summary, model = result.summary, result.model
    model.config.use_cache = True
    loss_before, loss_after = evidence_value(summary, "eval_loss", "before"), evidence_value(summary, "eval_loss")
    after = _answer(model, tok, template, prompt_text)

    table = Table(title="seektune demo: LoRA SFT of SmolLM2-135M-Instruct on medical QA", show_lines=True)
    table.add_column("", style="bold")
    table.add_column("before")
    table.add_column("after")
    table.add_row("eval loss", f"{loss_before:.4f}", f"{loss_after:.4f}")
    for p, b, a in zip(prompt_text, before, after):
        table.add_row(p[:120], b, a)
    console.print(table)
    improved = loss_after < loss_before
    console.print(f"eval loss {'fell' if improved else 'did NOT fall'}: {loss_before:.4f} -> "
                  f"{loss_after:.4f}; {summary['steps']} steps in {summary['train_seconds']:.0f}s, "
                  f"{summary['details']['real_tokens_per_s']} real tokens/s; run folder {out}")
    demo = {**summary, "eval_loss_before": loss_before, "eval_loss_after": loss_after, "answers_before": before,
            "answers_after": after, "prompts": prompt_text, "data_source": source}
    (out / "demo.json").write_text(json.dumps(demo, indent=2, ensure_ascii=False, default=str))
    return demo
