"""`train.compile`: regional torch.compile, one decoder layer at a time.

Compiling each transformer layer (not the whole model) lets dynamo compile the layer's code once and
reuse it for every layer, keeps peft, the fused loss and activation checkpointing outside the compiled
graphs, and leaves graph breaks local. On CPU inductor writes C++ (fused element-wise work around the
matmuls: RMSNorm, RoPE, SwiGLU, the LoRA additions). Measured on SmolLM2-135M + LoRA r16, batch 8 x 512,
2 cores: 34.2 -> 26.2 s per step (1.31x) after a ~60 s compile on the first step on one host; on another
(Zen 3, AVX2) the benchmark's steps were no faster (docs/benchmarks.md).
`auto` compiles only where that first-step cost pays back: a dense model, a C++ compiler on a CPU
machine, and at least AUTO_MIN_STEPS optimizer steps; a failed compile there falls back to eager.
"""

from __future__ import annotations

import shutil

import torch

AUTO_MIN_STEPS = 200
# Every layer runs the same code object, so its compiled variants share dynamo's per-code limit (8 by default):
# SmolLM2 training alone made 7 (layer 0's input needs no grad, checkpointed layers and their no-grad recompute),
# and evaluation adds more, which past the limit would silently run eager.
RECOMPILE_LIMIT = 32
BACKEND = "inductor"  # tests' short form swaps in "aot_eager" (dynamo + autograd capture, no code generation)


def decoder_layers(model) -> list:
    """The repeated transformer blocks: the longest ModuleList whose members all share one class."""
    best: list = []
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > len(best):
            kinds = {type(x) for x in m}
            if len(kinds) == 1 and "Layer" in next(iter(kinds)).__name__:
                best = list(m)
    return best


def has_cxx_compiler() -> bool:
    """Inductor's CPU backend writes C++ and needs a compiler to build it."""
    return any(shutil.which(c) for c in ("g++", "c++", "cc"))


def compile_decision(setting, model, planned_steps: int) -> tuple[bool, str]:
    """(compile?, why) for train.compile = true / false / auto."""
    if setting is False:
        return False, "off"
    from ..models.loader import is_moe

    if setting is True:
        return True, "train.compile: true"
    if is_moe(model):
        return False, "auto: off for MoE models (routing changes the graphs every step)"
    if not torch.cuda.is_available() and not has_cxx_compiler():
        return False, "auto: off (no C++ compiler for inductor on this CPU machine)"
    if planned_steps < AUTO_MIN_STEPS:
        return False, f"auto: off ({planned_steps} steps < {AUTO_MIN_STEPS}: the ~1 min first-step compile would not pay back)"
    return True, f"auto: {planned_steps} steps"


def compile_layers(model, fallback_to_eager: bool) -> int:
    """Compile every decoder layer in place (nn.Module.compile); returns how many."""
    import torch._dynamo

    if fallback_to_eager:
        torch._dynamo.config.suppress_errors = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=BACKEND)
    return len(layers)


def uncompile_layers(model) -> None:
    """Back to eager after training: generation changes shapes every decode step, and each new shape
    would be another compile."""
    for layer in decoder_layers(model):
        if getattr(layer, "_compiled_call_impl", None) is not None:
            layer._compiled_call_impl = None
