"""What seektune adds to every HF-Trainer-based stage (its own trainers and trl's), as one mixin.

    class SFTTrainer(SeekTrainerMixin, transformers.Trainer): ...
    class SeekDPOTrainer(SeekTrainerMixin, trl.DPOTrainer): ...

- optimizer groups with layer-wise rates and no weight decay on norms/biases, and our schedules
  (warmup then cosine/linear to a floor, or constant), for every stage alike;
- a NaN/inf loss skips its optimizer step (counted), and N in a row stop the run with advice;
- real-token accounting (tokens/s, padding share) when the batch is token ids;
- EWC penalty and embedding-space adversarial steps, when the stage sets them;
- checkpoints staged and renamed into place with a completion marker (engine/checkpoint.py), which
  also covers trl trainers: they override `_save_checkpoint` and call ours through `super()`; a full
  disk is a CheckpointError that keeps the previous checkpoint;
- optimizer, scheduler, scaler and RNG state in safetensors + JSON (engine/state_files.py), not HF's
  torch pickles (DeepSpeed, FSDP and XLA keep their own formats);
- SIGTERM / Ctrl-C: finish the step, save a checkpoint, raise TrainingInterrupted (engine/interrupt.py);
- a resumed run reports the whole run's train_loss (HF reports the mean of the resumed launch's steps
  only), and the health counters (skipped steps, gradient-band warnings) and trl's cumulative token
  count go on from the checkpoint: they travel in `seektune_trainer.json` inside each checkpoint.
A stage's own loss goes in `task_loss` (default: the parent trainer's compute_loss).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import state_files
from .checkpoint import CheckpointClient, write_errors
from .interrupt import StopOnSignal, StopSignals, TrainingInterrupted
from .optim import build_param_groups, make_scheduler, warmup_steps

TRAINER_STATE = "seektune_trainer.json"  # what HF's trainer_state.json lacks for an exact resume


class TokenCounter:
    """Counts real (non-pad) and padded tokens seen by training steps, for tokens/s and padding share."""

    def __init__(self):
        self.real = 0
        self.padded = 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real / self.padded if self.padded else 0.0


class SeekTrainerMixin:
    def __init__(self, *a, st_cfg=None, health=None, token_counter: TokenCounter | None = None, pad_token_id: int = 0,
                 **kw):
        super().__init__(*a, **kw)
        self.st_cfg = st_cfg
        self.health = health
        self.token_counter = token_counter or TokenCounter()
        self.pad_token_id = pad_token_id
        self._skip_step = False
        self._staging: str | None = None
        self.group_lrs: dict[str, float] = {}
        self.ewc = None  # engine.forgetting.EWC when train.ewc is set
        self.perturber = None  # engine.forgetting.EmbeddingPerturber when train.adversarial is set
        self.last_adv_loss: float | None = None
        self._prior = {"loss_sum": 0.0, "step": 0}  # the launches before this one (from the checkpoint)
        self._signals = StopSignals()
        self._last_checkpoint: str | None = None
        self.add_callback(StopOnSignal(self._signals))

    # -- accounting, adversarial step and NaN handling ------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
        if torch.is_tensor(ids):
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else \
                int((ids != self.pad_token_id).sum())
            self.token_counter.real += real
            self.token_counter.padded += ids.numel()
        loss = super().training_step(model, inputs, num_items_in_batch)
        adv = self.st_cfg.train.adversarial if self.st_cfg is not None else None
        if adv is not None and self.perturber is not None and torch.isfinite(loss).all():
            from .forgetting import adversarial_step

            adv_loss = adversarial_step(self, model, inputs, num_items_in_batch, self.perturber, adv.method,
                                        adv.epsilon, adv.steps, adv.alpha)
            if adv_loss is not None:
                self.last_adv_loss = float(adv_loss)
        if self.health is not None:
            loss = self._guard_nonfinite(loss)
        return loss

    def _guard_nonfinite(self, loss):
        if torch.isfinite(loss).all():
            self.health.nonfinite_streak = 0
            return loss
        self._skip_step = True  # the whole optimizer step this micro-batch belongs to
        self.health.nonfinite_total += 1
        self.health.nonfinite_streak += 1
        limit = self.st_cfg.monitor.max_nonfinite_in_a_row if self.st_cfg is not None else 5
        self.health.warn(f"step {self.state.global_step + 1}: loss is {loss.item()}; step skipped "
                         f"({self.health.nonfinite_streak} in a row, {self.health.nonfinite_total} total)")
        if self.health.nonfinite_streak >= limit:
            self.health.warn(f"stopping: {limit} non-finite losses in a row. Try a lower train.lr, keep "
                             "train.max_grad_norm clipping on, train in float32 (model.dtype), and check the data "
                             "for empty or garbled rows (seektune data clean).")
            self.control.should_training_stop = True
        return torch.zeros_like(loss)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self.task_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.ewc is not None and model.training:
            # one penalty per optimizer step, spread over its micro-batches
            pen = self.ewc.penalty(model) / self.args.gradient_accumulation_steps
            return (out[0] + pen, out[1]) if return_outputs else out + pen
        return out

    def task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stage's own loss; the parent trainer's by default."""
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    # -- optimizer and schedule -----------------------------------------------------------------
    def create_optimizer(self, *a, **kw):
        if self.optimizer is None and self.st_cfg is not None:
            t = self.st_cfg.train
            groups = build_param_groups(self.model, t.lr, t.weight_decay, t.layerwise_lr,
                                        lora_b_ratio=self.st_cfg.adapter.loraplus_lr_ratio)
            self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        opt = super().create_optimizer(*a, **kw) if self.optimizer is None else self.optimizer
        if not getattr(opt, "_seektune_wrapped", False):
            inner_step = opt.step

            def step(*sa, **skw):
                # the rates this step uses, per named group (logged by the monitor)
                self.group_lrs = {g.get("name", str(i)).replace(".no_decay", ""): g["lr"]
                                  for i, g in enumerate(opt.param_groups)}
                if self._skip_step:
                    self._skip_step = False
                    return None
                return inner_step(*sa, **skw)

            opt.step = step
            opt._seektune_wrapped = True
        return opt

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.st_cfg is not None:
            t = self.st_cfg.train
            self.lr_scheduler = make_scheduler(optimizer or self.optimizer, num_training_steps,
                                               warmup_steps(t, num_training_steps), t.lr_scheduler, t.lr, t.min_lr)
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    # -- one run across launches: train_loss, health counters and token counts survive a resume ----
    def train(self, resume_from_checkpoint=None, *a, **kw):
        self._prior = {"loss_sum": 0.0, "step": 0}
        if isinstance(resume_from_checkpoint, str):
            p = os.path.join(resume_from_checkpoint, TRAINER_STATE)
            if os.path.exists(p):
                with open(p, encoding="utf-8") as f:
                    self._prior = json.load(f)
                if "trl_train_tokens" in self._prior and hasattr(self, "_total_train_tokens"):
                    self._total_train_tokens = self._prior["trl_train_tokens"]
                if self.health is not None:
                    for k, v in self._prior.get("health", {}).items():
                        setattr(self.health, k, v)
        with self._signals:
            out = super().train(resume_from_checkpoint, *a, **kw)
        if self._signals.requested:
            raise TrainingInterrupted(self._signals.signum, self.state.global_step, self._last_checkpoint)
        if self._prior["step"]:
            loss = self._whole_run_loss(out.training_loss)
            out = out._replace(training_loss=loss, metrics={**out.metrics, "train_loss": loss})
        return out

    def _run_epoch(self, *a, **kw):
        # transformers 5 runs one step before it checks max_steps: a run resumed from its last checkpoint
        # (stopped while writing final/) would train a step more than the run it continues
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*a, **kw)

    def _loss_sum(self) -> float:
        """Sum of the per-step training losses of this run so far (all launches)."""
        launch = getattr(self, "_total_loss_scalar", 0.0)
        tr = getattr(self, "_tr_loss", None)
        if torch.is_tensor(tr):
            launch += float(tr.item())
        return self._prior["loss_sum"] + launch

    def _whole_run_loss(self, launch_mean: float) -> float:
        steps_here = self.state.global_step - self._prior["step"]
        return (self._prior["loss_sum"] + launch_mean * steps_here) / max(self.state.global_step, 1)

    def log(self, logs, *a, **kw):
        if "train_loss" in logs and "train_runtime" in logs and getattr(self, "_prior", {}).get("step"):
            logs = {**logs, "train_loss": self._whole_run_loss(logs["train_loss"])}
        return super().log(logs, *a, **kw)

    # -- crash-safe checkpoints -----------------------------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Save into checkpoints/.staging, then rename into place: a checkpoint folder exists only whole."""
        client = CheckpointClient(self.args.output_dir, keep=self.args.save_total_limit or 2,
                                  is_main=self.args.should_save)
        if self.args.should_save:
            client.begin()
        self._staging = str(client.staging)
        real_limit, self.args.save_total_limit = self.args.save_total_limit, None  # we rotate, after the rename
        step = self.state.global_step
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                self._last_checkpoint = str(self._finish_checkpoint(client, step))
        except write_errors() as e:  # a full disk, a quota, a vanished mount: stop, the last good checkpoint kept
            raise client.failed(step, e) from None
        finally:
            self._staging = None
            self.args.save_total_limit = real_limit

    def _finish_checkpoint(self, client: CheckpointClient, step: int):
        best = None
        if self.state.best_global_step:
            best = str(client.folder / f"checkpoint-{self.state.best_global_step}")
            if (client.folder / f"checkpoint-{self.state.best_global_step}").exists() or \
                    self.state.best_global_step == step:
                self.state.best_model_checkpoint = best
            staged_state = client.staging / f"checkpoint-{step}" / "trainer_state.json"
            self.state.save_to_json(str(staged_state))  # must name the real folder for exact resume
        extra = {"loss_sum": self._loss_sum(), "step": step}
        if hasattr(self, "_total_train_tokens"):  # trl's cumulative num_tokens metric
            extra["trl_train_tokens"] = int(self._total_train_tokens)
        if self.health is not None:
            h = self.health
            extra["health"] = {"nonfinite_total": h.nonfinite_total, "nonfinite_streak": h.nonfinite_streak,
                               "grad_out_of_band": h.grad_out_of_band, "warnings": list(h.warnings)}
        (client.staging / f"checkpoint-{step}" / TRAINER_STATE).write_text(json.dumps(extra), encoding="utf-8")
        return client.commit(step, best=self.state.best_model_checkpoint)

    # -- trainer state without pickles (engine/state_files.py) -----------------------------------
    def _plain_state(self) -> bool:
        """Whether optimizer/scheduler state is ours to write: not under DeepSpeed, FSDP, XLA or SageMaker,
        which shard or wrap it in their own formats."""
        from transformers.utils import is_sagemaker_mp_enabled, is_torch_xla_available

        return not (self.is_deepspeed_enabled or self.is_fsdp_enabled or is_torch_xla_available()
                    or is_sagemaker_mp_enabled())

    def _rank(self) -> int | None:
        return None if self.args.world_size <= 1 else self.args.process_index

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._plain_state():
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            state_files.save_optimizer(self.optimizer, Path(output_dir))
            state_files.save_plain_state(self.lr_scheduler, Path(output_dir) / state_files.SCHEDULER)

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not self._plain_state():
            return super()._save_scaler(output_dir)
        if self.args.should_save:
            state_files.save_plain_state(scaler, Path(output_dir) / state_files.SCALER)

    def _save_rng_state(self, output_dir: str) -> None:
        from transformers.utils import (is_torch_hpu_available, is_torch_mlu_available, is_torch_musa_available,
                                        is_torch_npu_available, is_torch_xla_available)

        if any(f() for f in (is_torch_xla_available, is_torch_npu_available, is_torch_hpu_available,
                             is_torch_mlu_available, is_torch_musa_available)):
            return super()._save_rng_state(output_dir)  # generators only HF knows how to read back
        os.makedirs(output_dir, exist_ok=True)
        state_files.save_rng(Path(output_dir), self._rank())

    def _load_optimizer_and_scheduler(self, checkpoint):
        folder = Path(checkpoint) if checkpoint else None
        if folder is None or not (folder / state_files.OPTIMIZER).exists() or not self._plain_state():
            return super()._load_optimizer_and_scheduler(checkpoint)  # an older checkpoint: HF, weights_only
        state_files.load_optimizer(self.optimizer, folder)
        state_files.load_plain_state(self.lr_scheduler, folder / state_files.SCHEDULER)

    def _load_scaler(self, checkpoint):
        folder = Path(checkpoint) if checkpoint else None
        if folder is not None and (folder / state_files.SCALER).exists() and getattr(self.accelerator, "scaler", None):
            return state_files.load_plain_state(self.accelerator.scaler, folder / state_files.SCALER)
        return super()._load_scaler(checkpoint)

    def _load_rng_state(self, checkpoint):
        if checkpoint and state_files.load_rng(Path(checkpoint), self._rank()):
            return
        return super()._load_rng_state(checkpoint)

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        if output_dir and self.args.should_save:
            import os

            p = os.path.join(output_dir, "training_args.bin")
            if os.path.exists(p):
                os.remove(p)
            if not _internal_call:
                # the final adapter (a checkpoint's stays as trained: resume rebuilds the same residual base)
                from ..models.adapters import save_plain_lora

                save_plain_lora(self.accelerator.unwrap_model(self.model), output_dir)
