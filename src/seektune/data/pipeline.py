"""The `data.pipeline` section of a training config: data steps run on data.train before training.

Each step reads the previous step's output and writes `NN_step.jsonl` (split writes a folder) under
the run's `data/` folder. A `deidentify` step replaces personal data (put it first, so every later
output and rejects file is already de-identified). After a `split`, later steps (balance, augment,
curriculum, mix) apply to the training split only and the validation split becomes data.eval, so evaluation never sees
balanced, augmented or mixed records. A `curriculum` step turns on `data.curriculum` so the trainer
keeps its order. `pipeline.json` records every step's summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from .io import DataError

STEP_OPTIONS = {
    "clean": ("clean", "CleanOptions"), "split": ("split", "SplitOptions"), "balance": ("balance", "BalanceOptions"),
    "augment": ("augment", "AugmentOptions"), "curriculum": ("curriculum", "CurriculumOptions"),
    "mix": ("mix", "MixOptions"), "deidentify": ("deidentify", "DeidentifyOptions"),
}


def step_options(step: str, args: dict):
    """Validate a step's options; a ValueError names the bad key so the config error points at it."""
    import importlib

    mod, cls = STEP_OPTIONS[step]
    model = getattr(importlib.import_module(f"seektune.data.{mod}"), cls)
    try:
        return model.model_validate(args)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msgs.append(f"{step} step has no option '{key}' (options: {', '.join(model.model_fields)})"
                        if err["type"] == "extra_forbidden" else f"{step}.{key}: {err['msg']}")
        raise ValueError("; ".join(msgs)) from None


def run_pipeline(cfg, out_dir: str | Path, show_progress: bool = True, log=print):
    """Run cfg.data.pipeline; return a copy of cfg whose data.train/eval are the outputs (pipeline emptied)."""
    from .augment import augment_file
    from .balance import balance_file
    from .clean import clean_file
    from .curriculum import curriculum_file
    from .deidentify import deidentify_file
    from .mix import mix_files
    from .split import split_file

    if not cfg.data.train:
        raise DataError("data.train is not set: the data pipeline needs an input file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    current, eval_file, test_file = cfg.data.train, cfg.data.eval, None
    curriculum = cfg.data.curriculum
    record = {"input": current, "steps": []}
    for i, st in enumerate(cfg.data.pipeline, start=1):
        opts = step_options(st.step, st.model_extra or {})
        name = f"{i:02d}_{st.step}"
        target = out_dir / f"{name}.jsonl"
        if st.step == "clean":
            s = clean_file(current, target, opts, show_progress)
            log(f"data pipeline {name}: read {s['read']:,}, kept {s['kept']:,}, rejected {s['rejected']:,} "
                f"({', '.join(f'{k} {v:,}' for k, v in s['rejected_by_rule'].items()) or 'none'}); rejects in {s['rejects']}")
        elif st.step == "split":
            if cfg.data.eval:
                raise DataError("data.pipeline has a split step but data.eval is also set: use one or the other")
            s = split_file(current, out_dir / name, opts)
            target = out_dir / name / "train.jsonl"
            eval_file = str(out_dir / name / "validation.jsonl")
            test_file = str(out_dir / name / "test.jsonl")
            log(f"data pipeline {name}: " + ", ".join(f"{k} {v:,}" for k, v in s["counts"].items())
                + f"; test set kept for evaluation in {test_file}")
        elif st.step == "balance":
            s = balance_file(current, target, opts)
            log(f"data pipeline {name}: {s['read']:,} -> {s['written']:,}, largest class share "
                f"{s['max_share_after']:.1%}")
        elif st.step == "augment":
            s = augment_file(current, target, opts, show_progress)
            log(f"data pipeline {name}: {s['source']:,} records + {s['augmented']:,} augmented copies")
        elif st.step == "deidentify":
            s = deidentify_file(current, target, opts, show_progress)
            log(f"data pipeline {name}: {s['records_changed']:,} of {s['records_scanned']:,} records de-identified "
                f"({', '.join(f'{k} {v:,}' for k, v in s['spans_by_type'].items()) or 'nothing found'}); "
                f"review sample in {s['sample']}")
        elif st.step == "curriculum":
            s = curriculum_file(current, target, opts, show_progress)
            curriculum = True
            log(f"data pipeline {name}: ordered {s['written']:,} records by {s['by']}")
        else:
            s = mix_files(current, target, opts, log=log)
            log(f"data pipeline {name}: {s['domain_records']:,} domain + {s['general_records']:,} general")
        current = str(target)
        record["steps"].append({"step": st.step, "output": current, "summary": s})
    record.update(train=current, eval=eval_file, test=test_file)
    (out_dir / "pipeline.json").write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str),
                                           encoding="utf-8")
    new = cfg.model_copy(deep=True)
    new.data.train, new.data.eval, new.data.pipeline, new.data.curriculum = current, eval_file, [], curriculum
    return new
