"""Chat: the base model and a tuned run answer the same prompt, streamed, reasoning kept apart.

Models load the way `seektune serve` loads them (serve.server.load_for_serving: adapters merged), the
prompt is rendered by the template the run trained with, and replies are split with the same
ReasoningStream the server uses for `reasoning_content`, so what the UI shows is what a deployment
returns.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

from ..data.reasoning import ReasoningStream
from ..data.templates import get_template
from ..eval.generation import stop_token_ids
from ..models.presets import PRESETS
from ..serve.server import Loaded, load_for_serving
from .workspace import Workspace


@dataclass
class ChatSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    system_prompt: str = ""


def target_path(ws: Workspace, text: str, what: str) -> str:
    """A preset name as it is, anything else a folder inside the workspace."""
    text = (text or "").strip()
    return text if text in PRESETS else str(ws.path(text, what, must_exist=True))


class ModelCache:
    """The last few loaded models (loading is the slow part; two fit the base + tuned pair)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, target: str) -> Loaded:
        with self._lock:
            if target in self._models:
                self._models.move_to_end(target)
                return self._models[target]
            loaded = load_for_serving(target)
            self._models[target] = loaded
            while len(self._models) > self.keep:
                self._models.popitem(last=False)
            return loaded


_ENGINE_LOCKS: dict[int, threading.Lock] = {}  # one generation at a time per engine (llama.cpp's is not reentrant)


def stream_reply(loaded: Loaded, prompt: str, s: ChatSettings) -> Iterator[tuple[str, str]]:
    """(reasoning so far, answer so far) after each generated piece of text."""
    tok, model = loaded.tok, loaded.model
    template = get_template(loaded.template, tok)
    messages = ([{"role": "system", "content": s.system_prompt}] if s.system_prompt else []) + \
        [{"role": "user", "content": prompt}]
    if loaded.engine is not None:  # a GGUF (llama.cpp) or vLLM: the serving engine decodes, as `seektune serve`
        yield from _engine_reply(loaded, template, messages, s)
        return
    import torch
    from transformers import TextIteratorStreamer

    ids = tok(template.prompt(messages), add_special_tokens=False, return_tensors="pt")
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    stops = stop_token_ids(tok, model)
    kwargs = dict(**ids, max_new_tokens=s.max_new_tokens, streamer=streamer, eos_token_id=stops,
                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0])
    if s.temperature > 0:
        kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as e:  # shown to the user instead of a hung stream
            errors.append(e)
            streamer.end()

    threading.Thread(target=work, daemon=True).start()
    splitter = ReasoningStream(bool(getattr(template, "opens_think", False)))
    parts = {"reasoning": "", "content": ""}
    for delta in streamer:
        for kind, text in splitter.feed(delta):
            parts[kind] += text
        yield parts["reasoning"], parts["content"]
    for kind, text in splitter.flush():
        parts[kind] += text
    if errors:
        raise RuntimeError(f"generation failed: {type(errors[0]).__name__}: {errors[0]}")
    yield parts["reasoning"], parts["content"]


def _engine_reply(loaded: Loaded, template, messages: list[dict], s: ChatSettings) -> Iterator[tuple[str, str]]:
    """The reply from the Loaded's serving engine (its run() with one request), its deltas streamed."""
    import queue

    from ..serve.batcher import GenRequest

    ids = loaded.tok(template.prompt(messages), add_special_tokens=False)["input_ids"]
    req = GenRequest(ids, max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
    events: queue.Queue = queue.Queue()
    req.emit = lambda kind, value: events.put((kind, value))  # from the generating thread
    lock = _ENGINE_LOCKS.setdefault(id(loaded.engine), threading.Lock())

    def work():
        with lock:
            try:
                loaded.engine.run([req])
            except BaseException as e:  # shown to the user instead of a hung stream
                events.put(("error", f"{type(e).__name__}: {e}"))
            events.put(("end", None))

    threading.Thread(target=work, daemon=True).start()
    splitter = ReasoningStream(bool(getattr(template, "opens_think", False)))
    parts = {"reasoning": "", "content": ""}
    error = None
    while True:
        kind, value = events.get()
        if kind == "delta":
            for k, text in splitter.feed(value):
                parts[k] += text
            yield parts["reasoning"], parts["content"]
        elif kind == "error":
            error = value
        elif kind == "end":
            break
    for k, text in splitter.flush():
        parts[k] += text
    if error:
        raise RuntimeError(f"generation failed: {error}")
    yield parts["reasoning"], parts["content"]
