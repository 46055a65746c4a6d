"""Serve a GGUF through llama.cpp (llama-cpp-python, `make llama-cpp`) behind the same OpenAI API.

`seektune serve OUT/NAME.q4_k_m.gguf` runs the file with llama.cpp, the engine Ollama and LM Studio
run, while the app (app.py) stays the one the HF models use: the same endpoints, API key, limits,
streaming and `reasoning_content` split. The prompt ids still come from an HF tokenizer and
seektune's chat template, so the text the GGUF sees is what HF serving feeds: those of OUT/hf (the
merged folder the GGUF was converted from) when it is there, else transformers' reading of the
GGUF's own tokenizer and chat template.

llama-cpp-python's `Llama` holds one sequence, so `LlamaCppEngine` decodes requests one after
another: the batcher's queue still takes concurrent requests, and each waits for the one before it.
llama.cpp's own server, `llama-server` (not built here), decodes parallel slots in one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..export.errors import ExportError
from ..export.gguf import llamacpp
from .batcher import Engine, GenRequest, _Row

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a fresh random seed


class LlamaCppEngine(Engine):
    """A drop-in for Engine that DynamicBatcher drives: one request at a time on a llama.cpp `Llama`.

    Sampling is llama.cpp's: temperature 0 is greedy, otherwise its top-p then temperature samplers
    seeded with the request's seed (no top-k, min-p or repetition penalty). Finishing a row (stop
    strings, eos, max_tokens, incomplete UTF-8, streamed deltas, a client that left) is Engine's
    `_advance`, the code the HF engine runs."""

    def __init__(self, llm, tok, eos_ids=()):
        self.llm, self.tok, self.model = llm, tok, None
        self.n_vocab = llm.n_vocab()
        self.eos_ids = {llm.token_eos(), tok.eos_token_id, *eos_ids} - {None, -1}

    def _check(self, ids: list[int]) -> None:
        if ids and (min(ids) < 0 or max(ids) >= self.n_vocab):  # llama.cpp would fail on them, or worse
            raise ValueError(f"token ids outside the GGUF's vocabulary of {self.n_vocab}")

    def _prompt_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every prompt position. The Llama is built without logits_all (that keeps
        n_ctx x vocab floats for the server's lifetime), so one evaluation stores all rows into a
        buffer of the prompt's size instead."""
        llm = self.llm
        self._check(ids)
        saved = llm.scores, llm._logits_all
        llm.scores, llm._logits_all = np.zeros((len(ids), self.n_vocab), dtype=np.float32), True
        try:
            llm.reset()
            llm.eval(list(ids))
            return torch.from_numpy(llm.scores)
        finally:
            llm.scores, llm._logits_all = saved
            llm.reset()

    def _decode(self, r: GenRequest, on_step) -> tuple[str, _Row, int]:
        """One request to its finish: (finish reason, row, decode steps)."""
        row = _Row(r, None)
        if r.cancelled:  # its client left while it waited for the requests before it
            return "cancelled", row, 0
        self._check(r.prompt_ids)
        greedy = r.temperature <= 0
        self.llm.set_seed(RANDOM_SEED if r.seed is None else r.seed % RANDOM_SEED)
        # reset=True keeps the KV cache of a prompt prefix shared with the previous request
        gen = self.llm.generate(r.prompt_ids, temp=0.0 if greedy else r.temperature, top_p=1.0 if greedy else r.top_p,
                                top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True)
        steps = 0
        try:
            for t in gen:
                steps += 1
                if on_step is not None:
                    on_step(1)
                finish = self._advance(row, int(t))
                if finish:
                    return finish, row, steps
        finally:
            gen.close()
        raise RuntimeError("llama.cpp stopped generating")  # generate() never ends by itself

    def run(self, reqs: list[GenRequest], take_more=None, max_batch: int | None = None, on_step=None,
            on_cancel=None) -> dict:
        """Decode `reqs` one after another; when they are done, `take_more(1)` hands over the next queued
        request, so one call serves the queue until it is empty. Returns Engine.run's counts (every
        step decodes one row)."""
        pending = list(reqs)
        steps = cancelled = served = 0
        while pending:
            r = pending.pop(0)
            served += 1
            try:
                finish, row, n = self._decode(r, on_step)
            except Exception as e:  # noqa: BLE001 - fail this request only, not the ones queued behind it
                self.llm.reset()
                r.emit("error", f"generation failed: {type(e).__name__}: {e}")
            else:
                steps += n
                if finish == "cancelled":
                    cancelled += 1
                    if on_cancel is not None:
                        on_cancel()
                r.emit("done", {"finish_reason": finish, "prompt_tokens": len(r.prompt_ids),
                                "completion_tokens": len(row.tokens)})
            if not pending and take_more is not None:
                pending += take_more(1)
        return {"steps": steps, "row_steps": steps, "largest": 1 if served else 0, "requests": served,
                "cancelled": cancelled}


def gguf_header(path: Path) -> tuple[str | None, int | None]:
    """(general.architecture, `<arch>.context_length`) from the GGUF header."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def val(key):
        f = r.fields.get(key)
        return f.contents() if f is not None else None

    arch = val("general.architecture")
    ctx = val(f"{arch}.context_length") if arch else None
    return arch, int(ctx) if ctx else None


def _tokenizer(path: Path):
    """(tokenizer, template name, extra eos ids, where they came from). OUT/hf beside OUT/NAME.QUANT.gguf is
    the merged folder the GGUF was converted from: its tokenizer and chat template are what the export
    checked the GGUF with. Without it, transformers reads the GGUF's own tokenizer and chat template."""
    from ..models import tokenizer_file
    from ..models.presets import fix_pad_token

    hf = path.parent / "hf"
    if (hf / "tokenizer_config.json").exists():
        from ..export.source import load_tokenizer_for, resolve_source

        src = resolve_source(hf)
        tok = load_tokenizer_for(src)
        eos: list[int] = []
        if (hf / "generation_config.json").exists():
            from transformers import GenerationConfig

            e = GenerationConfig.from_pretrained(str(hf)).eos_token_id
            eos = [x for x in (e if isinstance(e, list) else [e]) if x is not None]
        return tok, src.template, eos, f"tokenizer and chat template of {hf}"
    try:
        tok = tokenizer_file.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - transformers reads the tokenizers of some architectures only
        raise ExportError(f"{path}: no hf/ folder beside it (the merged model `seektune export --format gguf` "
                          f"writes there) and transformers cannot read the GGUF's tokenizer "
                          f"({type(e).__name__}: {e}); serve it from its export folder") from None
    fix_pad_token(tok)
    # no chat template: the app refuses to guess one (server.build_app asks for --template)
    return tok, "auto" if getattr(tok, "chat_template", None) else "", [], "the GGUF's own tokenizer and chat template"


def load_gguf(path: str | Path, threads: int | None = None, context_length: int | None = None):
    """(engine, served name, template name, description, context length) for a .gguf file."""
    from ..export.gguf.pipeline import NUM_CTX_CAP

    path = Path(path).expanduser()
    why = llamacpp.missing()
    if why:
        raise ExportError(f"serving a GGUF runs llama.cpp: {why}; or serve the merged HF folder "
                          f"({path.parent / 'hf'}) instead")
    if not path.is_file():
        raise ExportError(f"{path}: no such GGUF file")
    import llama_cpp
    from llama_cpp import Llama

    arch, trained = gguf_header(path)
    ctx = min(trained or NUM_CTX_CAP, context_length or NUM_CTX_CAP)  # llama.cpp allocates the KV cache up front
    tok, template, eos, origin = _tokenizer(path)
    threads = threads or torch.get_num_threads()
    try:
        llm = Llama(model_path=str(path), n_ctx=ctx, n_batch=min(ctx, 512), n_threads=threads,
                    n_threads_batch=threads, verbose=False, seed=0)
    except ValueError as e:
        raise ExportError(f"llama.cpp cannot load {path}: {e}") from None
    if len(tok) > llm.n_vocab():
        llm.close()
        raise ExportError(f"{path}: the tokenizer ({origin}) has {len(tok)} tokens, the GGUF {llm.n_vocab()}: "
                          f"they do not belong together")
    describe = (f"GGUF {path} through llama.cpp (llama-cpp-python {llama_cpp.__version__}, {arch}, {threads} threads, "
                f"context {ctx} of {trained or 'unknown'}; {origin})")
    return LlamaCppEngine(llm, tok, eos), path.stem, template, describe, ctx
