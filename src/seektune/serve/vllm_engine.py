"""Serve an HF model folder through vLLM (`pip install vllm`, a CUDA GPU) behind the same OpenAI API.

`seektune serve DIR --engine vllm` (or `auto`, the default, where vLLM is installed and a GPU is
visible) decodes with vLLM's engine, continuous batching and paged KV cache included, while the app
(app.py) stays the one the HF engine uses: the same endpoints, API key, limits, streaming and
`reasoning_content` split. The prompt ids still come from seektune: the tokenizer and chat template
the HF path loads (export/source.py), so vLLM sees exactly the ids HF serving feeds the model.

How it fits the batcher: DynamicBatcher hands `VllmEngine.run` a batch on its worker thread, as it
does for the HF engine. Every request goes to vLLM at once (vLLM schedules them), and while they run
`take_more` pulls newly queued ones in, up to `max_batch` in flight. vLLM's `AsyncLLMEngine` lives on
an event loop of its own, in a background thread; each request's coroutine forwards the new token
ids of vLLM's cumulative `RequestOutput`s to the worker thread, which feeds them one by one through
Engine's `_advance`, the code the HF engine runs: stop strings, eos, max_tokens, incomplete UTF-8,
the streamed deltas and a client that left behave as they do there. A request that seektune ends
first (a stop string, a cancelled client) is aborted in vLLM.

Sampling is vLLM's: temperature 0 is greedy, otherwise temperature then top-p, seeded per request
with `seed` (the same distribution as the HF engine's, drawn from other random numbers, so seeded
answers differ from the HF engine's). vLLM stops on the eos ids the HF engine stops on
(`stop_token_ids`) and at max_tokens; stop strings are seektune's (vLLM does not detokenize).

This module was written against vLLM's documented API (`vllm.AsyncLLMEngine`, the V1 `AsyncLLM`,
`AsyncEngineArgs`, `SamplingParams`, `generate(prompt=..., sampling_params=..., request_id=...)`,
`abort`) and is tested with a fake `vllm` module (tests/test_serve_vllm.py), not on a GPU.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from ..export.errors import ExportError
from .batcher import Engine, GenRequest, _Row

INSTALL = "`pip install vllm` (it needs a CUDA GPU)"
_FINISH = {"stop": "stop", "length": "length"}  # vLLM's finish reasons that are ours too


def _cuda_visible() -> bool:
    """A CUDA GPU is visible. device_count() asks NVML where it can, so the CUDA runtime is not
    initialised in this process before vLLM starts its workers."""
    return torch.cuda.device_count() > 0


def missing() -> str | None:
    """One line saying why vLLM cannot serve here (not installed, no CUDA GPU), or None."""
    import importlib.util

    try:
        absent = importlib.util.find_spec("vllm") is None  # cheap: nothing is imported
    except (ValueError, ImportError):  # a module without a spec (one put into sys.modules in code)
        absent = False
    if absent:
        return f"vLLM is not installed; {INSTALL}"
    if not _cuda_visible():
        return f"no CUDA GPU is visible (torch.cuda.device_count() is 0) and vLLM needs one; {INSTALL}"
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or an install whose CUDA libraries do not load
        return f"vLLM does not import ({type(e).__name__}: {e}); {INSTALL}"
    return None


@dataclass
class _Live:
    row: _Row
    future: object          # concurrent.futures.Future of the request's coroutine on vLLM's loop


class VllmEngine(Engine):
    """A drop-in for Engine that DynamicBatcher drives: requests run on a vLLM `AsyncLLMEngine`.

    `llm` is the engine, `loop` the event loop (running in its own thread) that drives it; `eos_ids`
    the ids the HF engine would stop on. Finishing a row is Engine's `_advance`."""

    def __init__(self, llm, tok, eos_ids, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None = None,
                 poll_s: float = 0.005):
        from vllm import SamplingParams

        self.llm, self.tok, self.model = llm, tok, None
        self.eos_ids = set(eos_ids) - {None}
        self.loop, self.thread, self.poll_s = loop, thread, poll_s
        self._SamplingParams = SamplingParams
        self._prefix = f"seektune-{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count()

    # ---- what vLLM is asked for -------------------------------------------------------------------

    def sampling_params(self, r: GenRequest, **extra):
        """SamplingParams for one request: greedy at temperature <= 0 (top_p 1, no seed), else
        temperature, top_p and seed as sent; max_tokens; the HF engine's eos ids. vLLM does not
        detokenize: the text is seektune's decoding of the token ids (`_advance`)."""
        greedy = r.temperature <= 0
        return self._SamplingParams(n=1, temperature=0.0 if greedy else float(r.temperature),
                                    top_p=1.0 if greedy else float(r.top_p), seed=None if greedy else r.seed,
                                    max_tokens=int(r.max_tokens), stop_token_ids=sorted(self.eos_ids),
                                    detokenize=False, **extra)

    def _rid(self) -> str:
        return self._prefix + str(next(self._ids))

    def _call(self, coro):
        """Run a coroutine on vLLM's loop; a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _generate(self, rid: str, ids: list[int], params, sink: queue.SimpleQueue) -> None:
        """Forward one request's outputs to `sink` as (rid, new token ids, end): end is None while it
        runs, vLLM's finish reason when it finished, an exception when it failed."""
        seen, finished = 0, False
        try:  # iterated to its end, not left early: vLLM's generator cleans up after the final output
            async for out in self.llm.generate(prompt={"prompt_token_ids": list(ids)}, sampling_params=params,
                                               request_id=rid):
                if finished:
                    continue
                c = out.outputs[0]
                toks = c.token_ids  # cumulative (RequestOutputKind.CUMULATIVE, the default)
                new = [int(t) for t in toks[seen:]]
                seen, finished = len(toks), bool(out.finished)
                sink.put((rid, new, (c.finish_reason or "stop") if finished else None))
            if not finished:
                sink.put((rid, [], RuntimeError("vLLM ended the request without finishing it")))
        except Exception as e:  # noqa: BLE001 - this request fails, the others go on
            sink.put((rid, [], e))

    async def _abort(self, rid: str) -> None:
        res = self.llm.abort(rid)
        if inspect.isawaitable(res):
            await res

    def _stop(self, rid: str, live: _Live) -> None:
        """Seektune finished a row vLLM is still decoding: abort it there and end its coroutine."""
        self._call(self._abort(rid))
        live.future.cancel()

    # ---- the batcher's interface ------------------------------------------------------------------

    def run(self, reqs: list[GenRequest], take_more=None, max_batch: int | None = None, on_step=None,
            on_cancel=None) -> dict:
        """Run `reqs` on vLLM to completion; while they run, `take_more(n)` hands over newly queued
        requests (up to `max_batch` in flight), which go to vLLM at once. Returns Engine.run's counts;
        a step is a wake-up of this loop that brought new tokens (vLLM's own steps are not visible)."""
        max_batch = max(max_batch or len(reqs), 1)
        sink: queue.SimpleQueue = queue.SimpleQueue()
        live: dict[str, _Live] = {}
        steps = row_steps = cancelled = total = largest = 0
        pending, asked = list(reqs), 0.0

        def finish(rid: str, reason: str, vllm_done: bool) -> None:
            nonlocal cancelled
            lv = live.pop(rid)
            if not vllm_done:
                self._stop(rid, lv)
            if reason == "cancelled":
                cancelled += 1
                if on_cancel is not None:
                    on_cancel()
            r = lv.row.req
            r.emit("done", {"finish_reason": reason, "prompt_tokens": len(r.prompt_ids),
                            "completion_tokens": len(lv.row.tokens)})

        try:
            while pending or live:
                for r in pending:
                    total += 1
                    row = _Row(r, None)
                    if r.cancelled:  # its client left while it waited
                        cancelled += 1
                        if on_cancel is not None:
                            on_cancel()
                        r.emit("done", {"finish_reason": "cancelled", "prompt_tokens": len(r.prompt_ids),
                                        "completion_tokens": 0})
                        continue
                    try:
                        params = self.sampling_params(r)
                    except Exception as e:  # noqa: BLE001 - vLLM refused the settings (a seed out of range)
                        r.emit("error", f"generation failed: {type(e).__name__}: {e}")
                        continue
                    rid = self._rid()
                    live[rid] = _Live(row, self._call(self._generate(rid, r.prompt_ids, params, sink)))
                pending = []
                largest = max(largest, len(live))
                events = []
                try:
                    events.append(sink.get(timeout=self.poll_s))
                    while True:
                        events.append(sink.get_nowait())
                except queue.Empty:
                    pass
                advanced = len(live)
                moved = False
                for rid, new, end in events:
                    lv = live.get(rid)
                    if lv is None:  # outputs of a row that already finished
                        continue
                    reason = None
                    for t in new:
                        reason = self._advance(lv.row, t)
                        if reason:
                            break
                    moved = moved or bool(new)
                    if reason:
                        finish(rid, reason, end is not None)
                    elif isinstance(end, BaseException):
                        live.pop(rid)
                        lv.row.req.emit("error", f"generation failed: {type(end).__name__}: {end}")
                    elif end is not None:
                        if end == "abort" and lv.row.req.cancelled:
                            finish(rid, "cancelled", True)
                        elif end in _FINISH:  # vLLM stopped first (eos it did not return, the context's end)
                            finish(rid, _FINISH[end], True)
                        else:
                            live.pop(rid)
                            lv.row.req.emit("error", f"generation failed: vLLM ended the request ({end})")
                for rid in [k for k, lv in live.items() if lv.row.req.cancelled]:  # no token needed to notice
                    finish(rid, "cancelled", False)
                if moved:
                    steps += 1
                    row_steps += advanced
                    if on_step is not None:
                        on_step(advanced)
                room = max_batch - len(live)
                now = time.perf_counter()
                if take_more is not None and room > 0 and now - asked >= self.poll_s:
                    asked = now
                    pending = list(take_more(room))
        except BaseException:
            for rid, lv in list(live.items()):  # leave nothing running in vLLM for a failed batch
                self._stop(rid, lv)
            raise
        return {"steps": steps, "row_steps": row_steps, "largest": largest, "requests": total,
                "cancelled": cancelled}

    def prompt_logprobs(self, ids: list[int], top: int) -> dict:
        """Engine.prompt_logprobs's answer from vLLM: `prompt_logprobs` for the prompt tokens and one
        greedy token with its `logprobs`, the `top` likeliest tokens at each position."""
        k = max(1, top)
        r = GenRequest(list(ids), 1, temperature=0.0)
        params = self.sampling_params(r, prompt_logprobs=k, logprobs=k)
        rid = self._rid()

        async def last():
            final = None
            async for out in self.llm.generate(prompt={"prompt_token_ids": list(ids)}, sampling_params=params,
                                               request_id=rid):
                final = out if final is None or not final.finished else final
            return final

        out = self._call(last()).result()
        if out is None or out.prompt_logprobs is None or not out.outputs or not out.outputs[0].token_ids:
            raise RuntimeError("vLLM returned no prompt logprobs")
        c = out.outputs[0]
        nxt = int(c.token_ids[0])
        seq = list(ids) + [nxt]
        dists = list(out.prompt_logprobs[1:len(ids)]) + [c.logprobs[0]]  # dists[i - 1] predicts seq[i]
        token_lp: list[float | None] = [None] + [float(d[seq[i + 1]].logprob) for i, d in enumerate(dists)]
        tops: list[dict | None] = [None] + [self._top(d, k) for d in dists]
        return self._echo_response(ids, seq, token_lp, tops)

    def _top(self, dist: dict, k: int) -> dict:
        """vLLM's {token id: Logprob} (the top k by rank, plus the actual token) as {text: logprob}."""
        ranked = sorted(dist.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30,
                                                      -kv[1].logprob))
        return {self.tok.decode([int(t)]): float(lp.logprob) for t, lp in ranked[:k]}

    def close(self) -> None:
        """Shut vLLM down and stop its loop (the server's process usually just exits)."""
        shutdown = getattr(self.llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=10)


def _eos_ids(path: Path, tok) -> set[int]:
    """The ids the HF engine stops on (Engine.__init__): the model's generation config's eos (that of
    generation_config.json, else the one transformers derives from config.json), else the tokenizer's,
    and the tokenizer's eos always."""
    from transformers import AutoConfig, GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(path))
    except OSError:  # no generation_config.json
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(path)))
    eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _start_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="seektune-vllm", daemon=True)
    thread.start()
    return loop, thread


def load_vllm(path, gpu_memory_utilization: float | None = None, max_model_len: int | None = None):
    """(engine, describe, context length) for a model folder, an INT8 (compressed-tensors) export or a
    preset. The tokenizer and chat template are those the HF path loads (the served template is the
    source's); `max_model_len` caps the context (default: the model's), `gpu_memory_utilization` is
    the share of GPU memory vLLM takes for weights and KV cache (vLLM's default 0.9)."""
    from ..export.source import Source, load_tokenizer_for, resolve_source

    why = missing()
    if why:
        raise ExportError(f"serving with vLLM: {why}")
    src = path if isinstance(path, Source) else resolve_source(path)
    if src.kind == "adapter":
        raise ExportError(f"{src.path} is a LoRA adapter; vLLM serves a merged model folder: "
                          f"`seektune export {src.run_dir or src.path} --out DIR`, then serve DIR (or use --engine hf)")
    import vllm
    from vllm import AsyncEngineArgs

    engine_cls = getattr(vllm, "AsyncLLMEngine", None)
    if engine_cls is None:  # a vLLM without the V0 name: V1's AsyncLLM is the same engine
        from vllm.v1.engine.async_llm import AsyncLLM as engine_cls
    tok = load_tokenizer_for(src)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(src.path))
    vocab = getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", None), "vocab_size", None)
    if vocab and len(tok) > vocab:
        raise ExportError(f"{src.path}: the tokenizer has {len(tok)} tokens, the model's embeddings {vocab}; vLLM "
                          f"cannot resize them (the HF engine does): export the merged model or use --engine hf")
    tok_dir = next(c for c in (src.path, src.base_path) if c and (Path(c) / "tokenizer_config.json").exists())
    gpu = 0.9 if gpu_memory_utilization is None else float(gpu_memory_utilization)
    args = AsyncEngineArgs(model=str(src.path), tokenizer=str(tok_dir), dtype="auto",
                           gpu_memory_utilization=gpu, max_model_len=max_model_len)
    loop, thread = _start_loop()
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # built here, outside any loop: vLLM starts its output handler on `loop` later
            llm = engine_cls.from_engine_args(args)
        else:  # a caller inside a running loop: build it on vLLM's own loop instead

            async def build():
                return engine_cls.from_engine_args(args)

            llm = asyncio.run_coroutine_threadsafe(build(), loop).result()
        ctx = _max_model_len(llm, loop) or max_model_len or int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        engine = VllmEngine(llm, tok, _eos_ids(Path(src.path), tok), loop, thread)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    describe = (f"{src.describe()} through vLLM {getattr(vllm, '__version__', '?')} (gpu_memory_utilization {gpu:g}, "
                f"max_model_len {ctx})")
    return engine, describe, ctx


def _max_model_len(llm, loop) -> int | None:
    """The context vLLM allocated for: V1's `model_config`, else `get_model_config()` (older engines)."""
    mc = getattr(llm, "model_config", None)
    if mc is None and callable(getattr(llm, "get_model_config", None)):
        async def get():
            return await llm.get_model_config()

        mc = asyncio.run_coroutine_threadsafe(get(), loop).result()
    n = getattr(mc, "max_model_len", None)
    return int(n) if n else None
