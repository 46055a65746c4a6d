"""Serve a GGUF through llama.cpp (llama-cpp-python, `make llama-cpp`) behind the same OpenAI API.

`seektune serve OUT/NAME.q4_k_m.gguf` runs the file with llama.cpp, the engine Ollama and LM Studio
run, while the app (app.py) stays the one the HF models use: the same endpoints, API key, limits,
streaming and `reasoning_content` split. The prompt ids still come from an HF tokenizer and
seektune's chat template, so the text the GGUF sees is what HF serving feeds: those of OUT/hf (the
merged folder the GGUF was converted from) when it is there, else transformers' reading of the
GGUF's own tokenizer and chat template.

Concurrent requests are decoded together, as llama.cpp's own `llama-server` does with its parallel
slots: llama-cpp-python's high-level `Llama` holds one sequence, so the engine opens a second llama.cpp
context on the same weights with `parallel` sequences sharing one KV cache (`kv_unified`), prefills each
new prompt into its own sequence, and decodes one token of every running sequence per `llama_decode`
call. A request is admitted when its prompt + max_tokens fit in the cache beside the running ones, so a
decode never runs out of KV space; until then it waits in the queue. Sampling is the HF engine's own
(`Engine._next_tokens` on llama.cpp's logits): the same seed gives the same tokens on either engine for
the same logits. `parallel=1` keeps the one-at-a-time path, which reuses the KV cache of a prompt prefix
shared with the previous request.
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

    def __init__(self, llm, tok, eos_ids=(), parallel: int = 1, threads: int | None = None):
        self.llm, self.tok, self.model = llm, tok, None
        self.n_vocab = llm.n_vocab()
        self.eos_ids = {llm.token_eos(), tok.eos_token_id, *eos_ids} - {None, -1}
        self.device = torch.device("cpu")
        self.parallel = max(1, int(parallel))
        self._slots = _Slots(llm, self.parallel, threads or llm.n_threads) if self.parallel > 1 else None

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
        """Decode `reqs` and, through `take_more`, the requests that queue meanwhile: together when the
        engine has parallel sequences, else one after another. Returns Engine.run's counts."""
        if self._slots is None:
            return self._run_one_by_one(reqs, take_more, on_step, on_cancel)
        return self._run_together(reqs, take_more, min(self.parallel, max_batch or self.parallel), on_step,
                                  on_cancel)

    def _run_together(self, reqs, take_more, width: int, on_step, on_cancel) -> dict:
        """Continuous batching on llama.cpp sequences: admit while a sequence and KV room are free, sample
        every running row from its logits, decode all their new tokens in one call."""
        sl = self._slots
        pending, live = list(reqs), {}  # live: seq id -> [row, tokens in its cache, next-token logits]
        steps = row_steps = cancelled = largest = served = 0

        def done(r: GenRequest, reason: str, completion: int) -> None:
            nonlocal cancelled
            if reason == "cancelled":
                cancelled += 1
                if on_cancel is not None:
                    on_cancel()
            r.emit("done", {"finish_reason": reason, "prompt_tokens": len(r.prompt_ids),
                            "completion_tokens": completion})

        def admit(r: GenRequest) -> None:
            if r.cancelled:  # its client left while it queued
                return done(r, "cancelled", 0)
            seq = sl.acquire(min(len(r.prompt_ids) + r.max_tokens, sl.n_ctx))
            try:
                self._check(r.prompt_ids)
                logits = sl.prefill(seq, r.prompt_ids)
            except Exception as e:  # noqa: BLE001 - fail this request only, not the ones running beside it
                sl.release(seq)
                return r.emit("error", f"generation failed: {type(e).__name__}: {e}")
            live[seq] = [_Row(r, self._generator(r)), len(r.prompt_ids), logits]

        while pending or live:
            while pending and len(live) < width and (not live or sl.room(len(pending[0].prompt_ids)
                                                                           + pending[0].max_tokens)):
                served += 1
                admit(pending.pop(0))  # one that does not fit yet waits until running rows leave
            if not live:
                continue
            seqs = list(live)
            rows = [live[q][0] for q in seqs]
            nxt = self._next_tokens(torch.stack([live[q][2] for q in seqs]), [w.req for w in rows],
                                    [w.gen for w in rows])
            steps += 1
            row_steps += len(seqs)
            largest = max(largest, len(seqs))
            if on_step is not None:
                on_step(len(seqs))
            going = []
            for q, row, t in zip(seqs, rows, nxt.tolist()):
                reason = self._advance(row, int(t))
                if not reason and live[q][1] + 1 >= sl.n_ctx:
                    reason = "length"  # the cache is full (the app keeps prompt + max_tokens within it)
                if reason:
                    del live[q]
                    sl.release(q)
                    done(row.req, reason, len(row.tokens))
                else:
                    going.append((q, int(t)))
            if take_more is not None and len(live) + len(pending) < width:
                pending += take_more(width - len(live) - len(pending))
            if going:
                for (q, _), logits in zip(going, sl.step([(q, t, live[q][1]) for q, t in going])):
                    live[q][1] += 1
                    live[q][2] = logits
        return {"steps": steps, "row_steps": row_steps, "largest": largest, "requests": served,
                "cancelled": cancelled}

    def _run_one_by_one(self, reqs, take_more, on_step, on_cancel) -> dict:
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


class _Slots:
    """`n_seq` llama.cpp sequences in one context on the Llama's weights, sharing a KV cache of the Llama's
    context size; KV room is reserved per sequence (prompt + max_tokens) when it is acquired."""

    def __init__(self, llm, n_seq: int, threads: int):
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = llm.n_ctx()
        p.n_batch = p.n_ubatch = min(p.n_ctx, max(512, n_seq))
        p.n_seq_max = n_seq
        p.kv_unified = True  # one cache shared by all sequences: memory as for a single context
        p.n_threads = p.n_threads_batch = threads
        p.no_perf = True
        self.n_ctx, self.n_batch, self.n_vocab = p.n_ctx, p.n_batch, llm.n_vocab()
        self.ctx = _internals.LlamaContext(model=llm._model, params=p, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.free = list(range(n_seq))[::-1]
        self.busy: dict[int, int] = {}  # seq id -> KV cells reserved

    def room(self, need: int) -> bool:
        return bool(self.free) and sum(self.busy.values()) + need <= self.n_ctx

    def acquire(self, need: int) -> int:
        seq = self.free.pop()
        self.busy[seq] = need
        self.ctx.kv_cache_seq_rm(seq, -1, -1)
        return seq

    def release(self, seq: int) -> None:
        self.ctx.kv_cache_seq_rm(seq, -1, -1)
        self.busy.pop(seq, None)
        self.free.append(seq)

    def _logits(self, i: int) -> torch.Tensor:
        ptr = self.ctx.get_logits_ith(i)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())

    def _fill(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch.batch
        b.n_tokens = len(items)
        for j, (seq, tok, pos, want) in enumerate(items):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, pos, 1, want
            b.seq_id[j][0] = seq

    def prefill(self, seq: int, ids: list[int]) -> torch.Tensor:
        """The prompt into sequence `seq`, in chunks of n_batch; the logits after its last token."""
        if not ids:
            raise ValueError("an empty prompt")
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            last = start + len(chunk) == len(ids)
            self._fill([(seq, t, start + j, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
            self.ctx.decode(self.batch)
        return self._logits(len(chunk) - 1)

    def step(self, rows: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """One token for each (seq, token, position) in one decode call; each row's next logits."""
        out = []
        for start in range(0, len(rows), self.n_batch):
            part = rows[start:start + self.n_batch]
            self._fill([(q, t, pos, True) for q, t, pos in part])
            self.ctx.decode(self.batch)
            out += [self._logits(j) for j in range(len(part))]
        return out


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


def load_gguf(path: str | Path, threads: int | None = None, context_length: int | None = None, parallel: int = 1):
    """(engine, served name, template name, description, context length) for a .gguf file; `parallel`
    requests are decoded together (llama.cpp sequences sharing the context's KV cache)."""
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
                f"context {ctx} of {trained or 'unknown'}, up to {parallel} requests decoded together; {origin})")
    return LlamaCppEngine(llm, tok, eos, parallel=parallel, threads=threads), path.stem, template, describe, ctx
