"""train.stage: grpo: reinforcement learning with verifiable rewards (GRPO, the DeepSeek-R1 method) on
trl's GRPOTrainer.

For every prompt the policy samples `grpo.num_generations` completions; the reward functions
(eval/rewards.py) score them; advantages are the rewards normalised within the group, so no value
model is needed; the loss is trl's (grpo, dr_grpo, dapo or bnpo; GSPO with sequence-level ratios).
Prompts are rendered with our chat template and handed to trl as text, so the DeepSeek-R1
template's prompt ends in `<think>` exactly as R1's own does; the reasoning is generated, scored
(think_format) and trained, and the accuracy rewards read only the answer after `</think>`.

The silent failures users report are caught: every logged step carries each reward's mean and
spread, the share of groups whose rewards are all equal (no learning signal), the share of
completions cut at max_completion_length, completion length and (beta > 0) the KL; a warning is
raised when the cut share or the no-signal share stays above its threshold for several steps
(trl#5697: 97-99% truncated completions got reward 0 and nobody noticed).
Evidence: every reward's mean on held-out prompts with greedy decoding, before and after, and the
held-out cut share; sample completions with their rewards go into the report.
"""

from __future__ import annotations

import importlib.util
import json
import time

import torch
from transformers import TrainerCallback, set_seed

from ..data.prompts import load_prompt_data
from ..data.reasoning import THINK_OPEN
from ..data.templates import get_template
from ..engine.rollout import RolloutStats, Sampling, UnsupportedCache, group_rollout
from ..engine.run import RunFolder
from ..engine.summary import StageResult, evidence, make_summary
from ..engine.trainer import SeekTrainerMixin
from ..data.io import DataError
from ..eval.generation import GenerationSettings, generate_texts
from ..eval.rewards import Context, build_rewards
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..models.lora_inference import merged_lora
from ..utils.console import log
from ..utils.threads import configure_threads
from .common import trl_trainer


def _trainer_cls():
    from trl import GRPOTrainer

    class SeekGRPOTrainer(SeekTrainerMixin, GRPOTrainer):
        """trl's GRPOTrainer on the engine (schedules, NaN guard, crash-safe checkpoints, monitors), with the
        rollout phase timed: `rollout/seconds` and `rollout/tokens_per_s` (generated tokens) per step."""

        seek_grouped = False  # grpo.generation: grouped (set by run)
        seek_rollout_stats = None

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
            t0 = time.perf_counter()
            out = None
            if self.seek_grouped and not images and not multimodal_fields:
                try:
                    out = self._grouped_rollout(prompt_ids)
                except UnsupportedCache as e:
                    self.seek_grouped = False
                    self.health.warn(f"grpo.generation: grouped: {e}; the rollouts use transformers generate")
            if out is None:
                out = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, **kw)
            dt = time.perf_counter() - t0
            n = sum(len(c) for c in out[0])
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["rollout/seconds"].append(dt)
            self._metrics[mode]["rollout/tokens_per_s"].append(n / dt if dt > 0 else 0.0)
            return out

        def _grouped_rollout(self, prompt_ids):
            """engine/rollout.py's group rollout with trl's sampling settings (seektune sets temperature, top_k
            and top_p; trl's min_p and repetition_penalty stay at their neutral defaults), inside trl's own
            unwrap (which switches gradient checkpointing off so the KV cache is used)."""
            from trl.models import unwrap_model_for_generation

            g = self.generation_config
            sampling = Sampling(max_new_tokens=self.max_completion_length, temperature=g.temperature or 1.0,
                                top_k=g.top_k or 0, top_p=1.0 if g.top_p is None else g.top_p)
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                             gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                             generation_kwargs=self.generation_kwargs,
                                             gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
                                             ) as unwrapped, torch.no_grad(), merged_lora(unwrapped):
                completions = group_rollout(unwrapped, [list(p) for p in prompt_ids], sampling,
                                            set(self.eos_token_ids), self._tokenizer.pad_token_id,
                                            stats=self.seek_rollout_stats)
            return completions, None

    return SeekGRPOTrainer


class RolloutMonitor(TrainerCallback):
    """Warns when the rollouts stop teaching: completions cut at the length limit, or groups without signal."""

    def __init__(self, opts, health):
        self.o, self.health = opts, health
        self.streak = {"completions/clipped_ratio": 0, "frac_reward_zero_std": 0}
        self.warned: set[str] = set()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs:
            self._see(logs, state.global_step)

    def replay(self, records) -> None:
        """A resumed launch: the steps logged before its checkpoint (metrics.jsonl) count towards the streaks,
        so it warns exactly when and what the uninterrupted run warns (warnings of the earlier launch included)."""
        for rec in records:
            self._see(rec, rec.get("step", 0))

    def _see(self, logs: dict, step: int) -> None:
        limits = {"completions/clipped_ratio": self.o.warn_truncated_share,
                  "frac_reward_zero_std": self.o.warn_zero_signal_share}
        for key, limit in limits.items():
            v = logs.get(key)
            if not isinstance(v, (int, float)):
                continue
            self.streak[key] = self.streak[key] + 1 if v > limit else 0
            if self.streak[key] >= self.o.warn_after and key not in self.warned:
                self.warned.add(key)
                if key == "completions/clipped_ratio":
                    self.health.warn(
                        f"step {step}: {100 * v:.0f}% of completions were cut at grpo.max_completion_length="
                        f"{self.o.max_completion_length} for {self.streak[key]} logged steps: a reply cut before its "
                        "answer scores 0 on accuracy rewards. Raise grpo.max_completion_length, ask for shorter "
                        "reasoning in the prompt, add overlong_penalty, or set grpo.mask_truncated_completions")
                else:
                    self.health.warn(
                        f"step {step}: {100 * v:.0f}% of prompt groups had all-equal rewards for "
                        f"{self.streak[key]} logged steps: no learning signal. The prompts are too hard or too easy "
                        "for the model, the reward cannot tell replies apart, or grpo.num_generations is too small")


def _rows(items, texts) -> list[dict]:
    rows = []
    for it, text in zip(items, texts):
        rows.append({**it.columns, "prompt": text, "reference": it.reference or ""})
    keys = sorted({k for r in rows for k in r})
    return [{k: r.get(k) for k in keys} for r in rows]  # one schema for datasets


def _columns(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "prompt"] if rows else []
    return {k: [r[k] for r in rows] for k in keys}


def heldout(model, tok, template, items, texts: list[str], rewards, opts, cfg) -> dict:
    """Greedy completions of the held-out prompts, scored by every reward; plus the share cut at the limit."""
    if not items:
        return {}
    settings = GenerationSettings(max_new_tokens=opts.max_completion_length, batch_size=cfg.eval.batch_size,
                                  seed=cfg.train.seed)
    details: list = []
    completions = generate_texts(model, tok, template, [it.prompt for it in items], settings, details=details)
    ids = [d["ids"] for d in details]
    rows = _rows(items, texts)
    cols = _columns(rows)
    scores, per = {}, {}
    for r in rewards:
        vals = r(texts, completions, completion_ids=ids, **cols)
        per[r.name] = vals
        got = [v for v in vals if v is not None]
        scores[r.name] = round(sum(got) / len(got), 4) if got else None
    scores["truncated_share"] = round(sum(1 for d in details if not d["stopped"]) / len(details), 4)
    scores["mean_tokens"] = round(sum(d["tokens"] for d in details) / len(details), 1)
    samples = [{"where": it.where, "prompt": it.prompt[-1]["content"], "reference": it.reference or "",
                "completion": c, "rewards": {k: per[k][i] for k in per}}
               for i, (it, c) in enumerate(zip(items, completions))]
    return {"scores": scores, "samples": samples, "n": len(items)}


def _rollout_engine(opts) -> str:
    """vllm, grouped or transformers: what grpo.generation asks for (auto: vLLM on a GPU machine that has it)."""
    if opts.generation != "auto":
        return opts.generation
    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "grouped"


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    from datasets import Dataset
    from trl import GRPOConfig

    o = cfg.grpo
    # 1. setup: model, template, prompts, rewards
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    data = load_prompt_data(cfg.data, cfg.train.seed)
    rejects = list(data.rejects)
    train = _fit(data.train, template, tok, o.max_prompt_length, rejects)
    ev = _fit(data.eval, template, tok, o.max_prompt_length, rejects)
    stats = {**data.stats, "train": len(train[0]), "eval": len(ev[0]), "rejected": len(rejects)}
    stats["accounting"] = (f"{stats['read']} read = train {stats['train']} + eval {stats['eval']} + rejected "
                           f"{stats['rejected']}" + (f" + unused eval {stats['unused_eval']}" if data.unused else ""))
    run.write_rejects(rejects, data.unused)
    opens_think = _opens_think(template, train[1] + ev[1])
    log(f"prompts: {stats['accounting']}; {stats['with_reference']} with a reference answer; template {template.name}"
        + (" (the prompt opens <think>)" if opens_think else "") + f"; threads {threads}")
    if not train[0]:
        raise DataError(f"no training prompt fits grpo.max_prompt_length={o.max_prompt_length}")
    model, rep = apply_adapter(model, cfg.adapter, "causal_lm", log=log)
    for line in rep.lines():
        log(line)
    if hasattr(model.config, "router_aux_loss_coef"):  # Qwen-MoE / Mixtral: trl adds the router aux loss
        model.config.output_router_logits = True
        log(f"MoE: router aux loss passed through (coefficient {model.config.router_aux_loss_coef})")
    rewards = build_rewards(o.rewards, Context(opens_think, o.max_completion_length))
    _preflight(rewards, train)
    log("rewards: " + ", ".join(f"{r.name} x{w}" for r, w in zip(rewards, o.reward_weights or [1.0] * len(rewards))))
    engine = _rollout_engine(o)
    use_vllm = engine == "vllm"
    before = run.before("heldout", lambda: heldout(model, tok, template, ev[0], ev[1], rewards, o, cfg))
    if before:
        log("held-out before (greedy): " + ", ".join(f"{k} {v}" for k, v in before["scores"].items()))
    trainer, health, counter = trl_trainer(
        _trainer_cls(), GRPOConfig, cfg, run, model, tok, Dataset.from_list(_rows(train[0], train[1])), None,
        progress, [*(callbacks or [])], tokens_per_batch=cfg.train.batch_size * (o.max_prompt_length
                                                                                  + o.max_completion_length),
        trainer_kw={"reward_funcs": rewards}, whole_layer_checkpointing=True,
        num_generations=o.num_generations, max_completion_length=o.max_completion_length, loss_type=o.loss_type,
        importance_sampling_level=o.importance_sampling_level, beta=o.beta, epsilon=o.epsilon,
        epsilon_high=o.epsilon_high, scale_rewards=o.scale_rewards, num_iterations=o.num_iterations,
        temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, reward_weights=o.reward_weights,
        mask_truncated_completions=o.mask_truncated_completions, use_vllm=use_vllm,
        disable_dropout=o.disable_dropout, log_completions=False, shuffle_dataset=True)
    trainer.seek_grouped = engine == "grouped"
    trainer.seek_rollout_stats = RolloutStats()
    monitor = RolloutMonitor(o, health)
    if run.resume_from:  # metrics.jsonl holds exactly the steps up to the checkpoint (RunFolder.start cut it)
        monitor.replay(_logged_steps(run.metrics))
    trainer.add_callback(monitor)
    log(f"grpo: {o.num_generations} completions per prompt, {cfg.train.batch_size * cfg.train.grad_accum // o.num_generations}"
        f" prompt(s) per step, loss {o.loss_type}" + (" (GSPO: sequence-level ratios)" if o.importance_sampling_level
                                                      == "sequence" else "") + f", beta {o.beta}, rollouts by "
        + {"vllm": "vLLM", "grouped": "grouped decoding (one prefill per prompt)",
                    "transformers": "transformers generate"}[engine])

    # 2. train
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    ran = "transformers" if engine == "grouped" and not trainer.seek_grouped else engine  # after a fallback
    after = heldout(trainer.model, tok, template, ev[0], ev[1], rewards, o, cfg) if cfg.eval.before_after else {}
    if after:
        log("held-out after (greedy): " + ", ".join(f"{k} {v}" for k, v in after["scores"].items()))

    # 3. save
    trainer.model.config.use_cache = True
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))
    samples = (after or before or {}).get("samples", [])[: o.report_samples]
    if run.main and samples:
        from ..data.io import write_jsonl

        write_jsonl(run.path / "samples.jsonl", (after or before)["samples"])

    # 4. summary
    rows = []
    if before and after:
        for name in before["scores"]:
            better = "lower" if name in ("truncated_share", "mean_tokens") else "higher"
            if name == "mean_tokens":
                continue
            rows.append(evidence(f"held-out {name} (greedy)", before["scores"][name], after["scores"][name], better,
                                 after["n"], key=name))
    reward_keys = [f"rewards/{r.name}/mean" for r in rewards]
    summary = make_summary(
        "grpo", cfg, adapter_report=rep, model_path=model_path, data=stats, steps=trainer.state.global_step,
        train_loss=out.training_loss, train_seconds=train_s, threads=threads, final=str(run.final),
        warnings=health.warnings, resumed_from=run.resume_from, evidence_rows=rows,
        curves=[{"title": "GRPO: reward per function (training rollouts)", "keys": ["reward", *reward_keys]},
                {"title": "GRPO: cut at the length limit / groups without signal",
                 "keys": ["completions/clipped_ratio", "frac_reward_zero_std"]},
                {"title": "GRPO: completion length", "keys": ["completions/mean_length"]},
                {"title": "GRPO: rollout throughput (generated tokens/s)", "keys": ["rollout/tokens_per_s"]},
                {"title": "GRPO: KL to the reference", "keys": ["kl"]}],
        rewards=[r.name for r in rewards], reward_weights=o.reward_weights, loss_type=o.loss_type,
        importance_sampling_level=o.importance_sampling_level, num_generations=o.num_generations,
        rollouts=ran, rollout_work=vars(trainer.seek_rollout_stats) if ran == "grouped" else None,
        heldout_before=(before or {}).get("scores"),
        heldout_after=(after or {}).get("scores"), samples=samples, nonfinite_skipped=health.nonfinite_total)
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)


def preview(cfg, n: int = 3) -> list:
    """The first n training prompts exactly as trl receives them (`seektune data preview`): rendered by the
    chat template, ending where generation starts (`<think>\n` on the R1 template). No prompt token carries
    loss: GRPO trains on the sampled completions."""
    from ..data.preview import PreviewSample
    from ..models.loader import load_tokenizer

    tok = load_tokenizer(cfg.model)
    template = get_template(cfg.data.template, tok)
    data = load_prompt_data(cfg.data, cfg.train.seed)  # all of it: the hold-out decides what is training data
    items, texts = _fit(data.train[: max(n * 4, n + 8)], template, tok, cfg.grpo.max_prompt_length, [])
    return [PreviewSample(it.where, text, []) for it, text in list(zip(items, texts))[:n]]


def _opens_think(template, texts: list[str]) -> bool:
    """Whether the replies start inside the reasoning: the R1 template, or a tokenizer's own Jinja whose
    generation prompt ends with `<think>` (QwQ-style), so the rewards split the reply the right way."""
    return template.opens_think or (bool(texts) and all(t.rstrip().endswith(THINK_OPEN) for t in texts))


def _trl_text(text: str, tok) -> str:
    """The prompt text as trl must get it. trl tokenizes a text prompt with the tokenizer's special tokens
    (`tok(text)`); a tokenizer that adds BOS itself (Llama 3, Gemma, Mistral) would then put a second BOS
    before the one the template wrote. Leave the BOS to the tokenizer then, so trl's ids are the template's."""
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos) and tok.bos_token_id is not None:
        ids = tok(text)["input_ids"]
        if len(ids) >= 2 and ids[0] == ids[1] == tok.bos_token_id:
            return text[len(bos):]
    return text


def _fit(items, template, tok, max_prompt: int, rejects: list) -> tuple[list, list[str]]:
    """(items, prompts as trl gets them) that fit max_prompt tokens, counted as trl tokenizes them; the others
    become rejects (never cut)."""
    keep, texts = [], []
    for it in items:
        text = _trl_text(template.prompt(it.prompt), tok)
        n = len(tok(text)["input_ids"])
        if n > max_prompt:
            src, line = it.where.rsplit(":", 1)
            rejects.append({"source": it.source or src, "line": int(line), "reason": f"prompt has {n} tokens > "
                            f"grpo.max_prompt_length={max_prompt}"})
            continue
        keep.append(it)
        texts.append(text)
    return keep, texts


def _logged_steps(path) -> list[dict]:
    """The per-step records of metrics.jsonl, in order (the end-of-training record has no rollout keys)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _preflight(rewards, train) -> None:
    """Call every reward once on two dummy completions of real prompts, so a broken reward stops the run
    before any rollout is spent on it (RewardError names the function)."""
    items, texts = train
    rows = _rows(items[:1] * 2, texts[:1] * 2)
    cols = _columns(rows)
    for r in rewards:
        r([rows[0]["prompt"]] * 2, ["", "0"], completion_ids=[[], [0]], **cols)
