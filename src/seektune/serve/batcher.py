"""Dynamic batching: concurrent requests share one decoding loop (continuous batching).

One asyncio worker drains a bounded queue. It waits for a first request, keeps taking requests for
`window_ms` (or until `max_batch`), and hands the batch to a worker thread: a left-padded
prefill, then one forward pass per new token for all rows, each row with its own sampling
settings, max_tokens, stop strings and eos. Between decode steps, requests that arrived meanwhile
are prefilled and join the running batch (their KV cache is left-padded to the batch's length),
and finished rows leave at once, so the batch stays full while clients keep sending. Tokens go
back to each request's asyncio queue as they are produced, so streaming and non-streaming
responses share one path. `max_batch=1` is the no-batching baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.kv_batch import keep_rows, left_padded, rows_droppable


class QueueFullError(RuntimeError):
    """The bounded request queue is full (the server answers 503)."""


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    events: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: bool = False
    enqueued: float = 0.0

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Engine:
    """Runs one batch of requests to completion on a causal LM (called from one thread at a time)."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = eos if eos is not None else tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if tok.eos_token_id is not None:
            self.eos_ids.add(tok.eos_token_id)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids))

    def prompt_logprobs(self, ids: list[int], top: int) -> dict:
        """OpenAI `echo` + `logprobs` for one prompt: each prompt token's log-probability given the tokens
        before it (the first has none), the `top` likeliest tokens at each position, and one greedy token
        after the prompt. This is what log-likelihood benchmarks over an API read (lm-eval's
        local-completions)."""
        logp = torch.log_softmax(self._prompt_logits(ids), -1)
        nxt = int(logp[-1].argmax())
        seq = list(ids) + [nxt]
        token_lp: list[float | None] = [None] + [float(logp[i - 1, seq[i]]) for i in range(1, len(seq))]
        tops: list[dict | None] = [None]
        k = max(1, top)
        for i in range(1, len(seq)):
            v, j = logp[i - 1].topk(k)
            tops.append({self.tok.decode([int(t)]): float(x) for x, t in zip(v, j)})
        return self._echo_response(ids, seq, token_lp, tops)

    def _echo_response(self, ids: list[int], seq: list[int], token_lp: list, tops: list) -> dict:
        """The OpenAI `echo` + `logprobs` fields for the prompt `ids` and `seq` (prompt + one token)."""
        tokens = [self.tok.decode([t]) for t in seq]
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {"text": "".join(tokens), "tokens": tokens, "token_logprobs": token_lp, "top_logprobs": tops,
                "text_offset": offsets, "prompt_tokens": len(ids)}

    def _prompt_logits(self, ids: list[int]) -> torch.Tensor:
        """(len(ids), vocab) fp32 logits of one prompt from an empty cache."""
        with torch.no_grad():
            return self.model(torch.tensor([ids], device=self.device)).logits[0].float()

    def _next_tokens(self, logits: torch.Tensor, reqs: list[GenRequest], gens: list) -> torch.Tensor:
        nxt = logits.argmax(-1)
        for i, r in enumerate(reqs):
            if r.temperature <= 0:
                continue
            row = logits[i].float() / r.temperature
            if r.top_p < 1.0:
                sp, si = torch.sort(row, descending=True)
                cum = sp.softmax(-1).cumsum(-1)
                cut = cum - sp.softmax(-1) > r.top_p  # keep the smallest prefix reaching top_p
                row = row.index_fill(0, si[cut], float("-inf"))
            nxt[i] = torch.multinomial(row.softmax(-1), 1, generator=gens[i])[0]
        return nxt

    def _prefill(self, reqs: list[GenRequest]):
        """Left-padded prefill of new rows: returns (cache, mask, last positions, next-token logits)."""
        ids, mask, pos = left_padded([r.prompt_ids for r in reqs], self.pad_id, self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        return out.past_key_values, mask, pos[:, -1:], out.logits[:, -1, :]

    @staticmethod
    def _merge(a, b):
        """Concatenate two decoding states along the batch, left-padding the shorter KV cache."""
        ca, ma, pa, la = a
        cb, mb, pb, lb = b
        w = max(ma.shape[1], mb.shape[1])
        da, db = w - ma.shape[1], w - mb.shape[1]
        for x, y in zip(ca.layers, cb.layers):
            x.keys = torch.cat([F.pad(x.keys, (0, 0, da, 0)), F.pad(y.keys, (0, 0, db, 0))], dim=0)
            x.values = torch.cat([F.pad(x.values, (0, 0, da, 0)), F.pad(y.values, (0, 0, db, 0))], dim=0)
        mask = torch.cat([F.pad(ma, (da, 0)), F.pad(mb, (db, 0))], dim=0)
        return ca, mask, torch.cat([pa, pb]), torch.cat([la, lb])

    @staticmethod
    def _select(state, idx: torch.Tensor):
        """Keep the rows `idx`; drop KV columns that no remaining row attends to."""
        cache, mask, pos, logits = state
        return cache, keep_rows(cache, mask, idx), pos[idx], logits[idx]

    def _generator(self, r: GenRequest) -> torch.Generator:
        g = torch.Generator(device="cpu" if self.device.type == "cpu" else self.device)
        g.manual_seed(r.seed if r.seed is not None else int(time.time_ns() % (2 ** 31)))
        return g

    def _advance(self, row: "_Row", t: int) -> str | None:
        """Add token t to a row; stream its new text; return a finish reason or None."""
        r = row.req
        if r.cancelled:
            return "cancelled"
        if t in self.eos_ids:
            return "stop"
        row.tokens.append(t)
        text = self.tok.decode(row.tokens, skip_special_tokens=True)
        finish = None
        cut = min((k for k in (text.find(s) for s in r.stop) if k >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif len(row.tokens) >= r.max_tokens:
            finish = "length"
        if text.endswith("\ufffd") and not finish:
            return None  # a multi-byte character is incomplete: send it with the next token
        if len(text) > len(row.sent) and text.startswith(row.sent):
            r.emit("delta", text[len(row.sent):])
            row.sent = text
        return finish

    @torch.inference_mode()
    def run(self, reqs: list[GenRequest], take_more=None, max_batch: int | None = None, on_step=None,
            on_cancel=None) -> dict:
        """Decode `reqs` to completion. Between decode steps, `take_more(n)` may hand over up to n new
        requests, which are prefilled and join the running batch (continuous batching); finished rows
        leave at once, cancelled ones (the client went away) too. Returns counts: steps, row_steps (sum of
        batch sizes), largest batch, requests, cancelled."""
        rows = [_Row(r, self._generator(r)) for r in reqs]
        state = self._prefill(reqs)
        joinable = take_more is not None and rows_droppable(state[0])
        max_batch = max_batch or len(reqs)
        steps = row_steps = cancelled = 0
        largest, total = len(rows), len(rows)
        while rows:
            nxt = self._next_tokens(state[3], [w.req for w in rows], [w.gen for w in rows])
            steps += 1
            row_steps += len(rows)
            if on_step is not None:
                on_step(len(rows))
            keep = []
            for i, row in enumerate(rows):
                finish = self._advance(row, int(nxt[i]))
                if finish == "cancelled":
                    cancelled += 1
                    if on_cancel is not None:
                        on_cancel()
                if finish:
                    row.req.emit("done", {"finish_reason": finish, "prompt_tokens": len(row.req.prompt_ids),
                                          "completion_tokens": len(row.tokens)})
                else:
                    keep.append(i)
            new = take_more(max_batch - len(keep)) if joinable and len(keep) < max_batch else []
            if len(keep) < len(rows) and keep:
                idx = torch.tensor(keep, device=nxt.device)
                state, nxt = self._select(state, idx), nxt[idx]
            rows = [rows[i] for i in keep]
            if rows:
                cache, mask, pos, _ = state
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=mask.device)], dim=1)
                pos = pos + 1
                out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                                 past_key_values=cache, use_cache=True)
                state = (out.past_key_values, mask, pos, out.logits[:, -1, :])
            if new:
                fresh = self._prefill([r for r in new])
                state = self._merge(state, fresh) if rows else fresh
                rows += [_Row(r, self._generator(r)) for r in new]
                total += len(new)
                largest = max(largest, len(rows))
        return {"steps": steps, "row_steps": row_steps, "largest": largest, "requests": total, "cancelled": cancelled}


@dataclass
class _Row:
    req: GenRequest
    gen: torch.Generator
    tokens: list = field(default_factory=list)
    sent: str = ""


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0          # decode loops started from an empty engine
    rejected_full: int = 0
    cancelled: int = 0        # rows that left because their client went away
    largest_batch: int = 0
    steps: int = 0            # decode steps
    row_steps: int = 0        # sum over steps of the rows decoded together
    busy_seconds: float = 0.0  # summed when a decode loop ends (a loop still running is not in it)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "rejected_full": self.rejected_full,
                "cancelled": self.cancelled,
                "largest_batch": self.largest_batch, "steps": self.steps,
                "mean_batch": round(self.row_steps / self.steps, 2) if self.steps else 0.0,
                "busy_seconds": round(self.busy_seconds, 2)}


class DynamicBatcher:
    def __init__(self, engine: Engine, max_batch: int = 16, window_ms: float = 10.0, queue_size: int = 256):
        if max_batch < 1 or queue_size < 1:
            raise ValueError("max_batch and queue_size must be >= 1")
        self.engine, self.max_batch, self.window = engine, max_batch, window_ms / 1000.0
        self.queue_size = queue_size
        self.queue: asyncio.Queue | None = None
        self.stats = BatchStats()
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seektune-generate")
        self._lock = threading.Lock()

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.queue_size)
        self._task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize() if self.queue else 0

    def submit(self, req: GenRequest) -> None:
        """Queue a request (its events arrive on req.events); QueueFullError when the queue is full."""
        req.loop = asyncio.get_running_loop()
        req.events = asyncio.Queue()
        req.enqueued = time.perf_counter()
        try:
            self.queue.put_nowait(req)
        except asyncio.QueueFull:
            self.stats.rejected_full += 1
            raise QueueFullError(f"the request queue is full ({self.queue_size} waiting); retry later") from None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            waiting = len(batch)
            batch = [r for r in batch if not r.cancelled]
            self.stats.cancelled += waiting - len(batch)  # their clients left while they queued
            if not batch:
                continue
            t0 = time.perf_counter()
            joined: list[GenRequest] = []
            self.stats.requests += len(batch)
            self.stats.batches += 1  # counted when it starts: under steady load one loop never ends

            def take_more(n: int) -> list[GenRequest]:
                if n <= 0 or self.max_batch == 1:
                    return []
                got = asyncio.run_coroutine_threadsafe(self._drain(n), loop).result()
                joined.extend(got)
                self.stats.requests += len(got)
                return got

            try:
                await loop.run_in_executor(self._pool, self.engine.run, batch, take_more, self.max_batch,
                                           self._on_step, self._on_cancel)
            except Exception as e:  # one bad batch must not kill the server: fail its requests
                for r in batch + joined:
                    r.emit("error", f"generation failed: {type(e).__name__}: {e}")
            self.stats.busy_seconds += time.perf_counter() - t0

    async def score(self, prompts: list[list[int]], top: int) -> list[dict]:
        """Prompt log-probabilities, on the generation thread (one model call at a time)."""
        loop = asyncio.get_running_loop()
        self.stats.requests += len(prompts)
        return [await loop.run_in_executor(self._pool, self.engine.prompt_logprobs, ids, top) for ids in prompts]

    def _on_step(self, rows: int) -> None:
        """Live statistics (read by /health and the benchmark while a decode loop runs)."""
        self.stats.steps += 1
        self.stats.row_steps += rows
        self.stats.largest_batch = max(self.stats.largest_batch, rows)

    def _on_cancel(self) -> None:
        self.stats.cancelled += 1

    async def _drain(self, n: int) -> list[GenRequest]:
        out = []
        while len(out) < n:
            try:
                r = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if not r.cancelled:
                out.append(r)
            else:
                self.stats.cancelled += 1
        return out
