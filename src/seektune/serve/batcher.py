"""Dynamic batching: requests that arrive within a short window share one decoding loop.

One asyncio worker drains a bounded queue. It waits for a first request, then keeps taking
requests for `window_ms` (or until `max_batch`), and runs them as one left-padded batch in a
worker thread: one prefill, then one forward pass per new token for the whole batch, with each
row's own sampling settings, max_tokens, stop strings and eos. Tokens go back to each request's
asyncio queue as they are produced, so streaming and non-streaming responses share one path.
Requests arriving while a batch decodes wait for the next batch (windowed, not continuous,
batching). `max_batch=1` is the no-batching baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


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

    @torch.inference_mode()
    def run(self, reqs: list[GenRequest]) -> None:
        n = len(reqs)
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's last prompt token is at the end
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = []
        for r in reqs:
            g = torch.Generator(device="cpu" if self.device.type == "cpu" else self.device)
            g.manual_seed(r.seed if r.seed is not None else int(time.time_ns() % (2 ** 31)))
            gens.append(g)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
        tokens: list[list[int]] = [[] for _ in reqs]
        sent = [""] * n
        finish: list[str | None] = [None] * n
        for _ in range(max(r.max_tokens for r in reqs)):
            nxt = self._next_tokens(logits, reqs, gens)
            for i, r in enumerate(reqs):
                if finish[i]:
                    continue
                if r.cancelled:
                    finish[i] = "cancelled"
                    continue
                t = int(nxt[i])
                if t in self.eos_ids:
                    finish[i] = "stop"
                    continue
                tokens[i].append(t)
                text = self.tok.decode(tokens[i], skip_special_tokens=True)
                cut = min((k for k in (text.find(s) for s in r.stop) if k >= 0), default=-1)
                if cut >= 0:
                    text, finish[i] = text[:cut], "stop"
                elif len(tokens[i]) >= r.max_tokens:
                    finish[i] = "length"
                if text.endswith("\ufffd") and not finish[i]:
                    continue  # a multi-byte character is incomplete: send it with the next token
                if len(text) > len(sent[i]) and text.startswith(sent[i]):
                    r.emit("delta", text[len(sent[i]):])
                    sent[i] = text
            if all(finish):
                break
            step = nxt.clone()
            step[torch.tensor([f is not None for f in finish], device=step.device)] = self.pad_id
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(input_ids=step[:, None], attention_mask=mask, position_ids=pos,
                             past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :]
        for i, r in enumerate(reqs):
            r.emit("done", {"finish_reason": finish[i] or "length", "prompt_tokens": len(r.prompt_ids),
                            "completion_tokens": len(tokens[i])})


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    rejected_full: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "rejected_full": self.rejected_full,
                "largest_batch": self.largest_batch,
                "mean_batch": round(self.requests / self.batches, 2) if self.batches else 0.0,
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
            batch = [r for r in batch if not r.cancelled]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(self._pool, self.engine.run, batch)
            except Exception as e:  # one bad batch must not kill the server: fail its requests
                for r in batch:
                    r.emit("error", f"generation failed: {type(e).__name__}: {e}")
            self.stats.busy_seconds += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
