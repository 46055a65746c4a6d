"""Build the server for a run/model folder or a GGUF file and run it with uvicorn (foreground or in a thread).

A `.gguf` is decoded by llama.cpp (llamacpp_engine.py), one request at a time; everything else by
the HF engine with continuous batching (batcher.py). Both sit behind the same app (app.py)."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

import torch

from ..data.templates import get_template
from ..export.errors import ExportError
from ..export.source import load_causal_lm, resolve_source
from ..utils.console import log
from .app import ServeSettings, create_app
from .batcher import DynamicBatcher, Engine

API_KEY_ENV = "SEEKTUNE_API_KEY"


@dataclass
class ServeOptions:
    max_batch: int = 16
    window_ms: float = 10.0
    queue_size: int = 256
    max_tokens: int = 512
    default_max_tokens: int = 128
    max_prompt_tokens: int | None = None  # None: the model's context length minus one
    max_body_bytes: int = 1 << 20
    context_length: int | None = None
    api_key: str | None = None
    model_name: str | None = None
    template: str | None = None
    threads: int | None = None


@dataclass
class Loaded:
    """A model ready to serve; one Loaded can back several apps (tests, on/off benchmarks)."""
    model: object             # the HF model (None for a GGUF)
    tok: object
    name: str
    template: str             # "" when none is known (a GGUF without one): --template must say
    describe: str
    engine: object | None = None          # a GGUF's LlamaCppEngine; None: Engine(model, tok)
    context_length: int | None = None     # a GGUF's llama.cpp context (its KV cache is allocated for it)


def is_gguf(target) -> bool:
    return str(target).lower().endswith(".gguf")


def load_for_serving(target: str, threads: int | None = None, context_length: int | None = None) -> Loaded:
    """Load the model of `target` with any LoRA merged (merged weights decode faster). A .gguf file is
    loaded into llama.cpp with `threads` and a context of its own length capped at `context_length`."""
    if is_gguf(target):
        from .llamacpp_engine import load_gguf

        engine, name, template, describe, ctx = load_gguf(target, threads, context_length)
        return Loaded(None, engine.tok, name, template, describe, engine=engine, context_length=ctx)
    src = resolve_source(target)
    model, tok = load_causal_lm(src, merge=True)
    return Loaded(model, tok, src.name, src.template, src.describe())


def build_app(target: str | Loaded, opts: ServeOptions):
    """Return (FastAPI app, batcher) serving `target` (a path/preset, or an already Loaded model)."""
    if opts.threads and not is_gguf(target):  # a GGUF's llama.cpp threads are set when it loads
        torch.set_num_threads(opts.threads)
    loaded = target if isinstance(target, Loaded) else load_for_serving(target, opts.threads, opts.context_length)
    model, tok = loaded.model, loaded.tok
    if not (opts.template or loaded.template):
        raise ExportError(f"{loaded.describe}: no chat template (neither an hf/ folder beside the GGUF nor "
                          f"tokenizer.chat_template in it); pass --template (deepseek-v3, deepseek-r1, chatml)")
    template = get_template(opts.template or loaded.template, tok)
    if loaded.engine is not None:  # llama.cpp's context was fixed when the GGUF was loaded
        ctx = min(opts.context_length or loaded.context_length, loaded.context_length)
    else:
        ctx = opts.context_length or int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    key = opts.api_key if opts.api_key is not None else os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(opts.model_name or loaded.name, ctx, opts.max_tokens,
                             min(opts.default_max_tokens, opts.max_tokens), key, opts.max_prompt_tokens,
                             opts.max_body_bytes)
    engine = loaded.engine or Engine(model, tok)
    batcher = DynamicBatcher(engine, opts.max_batch, opts.window_ms, opts.queue_size)
    if loaded.engine is not None:
        decoding = "llama.cpp decodes one request at a time (max_batch does not apply)"
    else:
        decoding = f"batching up to {opts.max_batch} within {opts.window_ms:g} ms; threads {torch.get_num_threads()}"
    log(f"serve: {loaded.describe} as '{settings.model_name}'; template {template.name}; context {ctx}; "
        f"{decoding}; queue {opts.queue_size}; "
        f"limits: prompt {settings.prompt_cap} tokens, max_tokens {opts.max_tokens}, body {opts.max_body_bytes} "
        f"bytes; API key {'required' if key else 'off'}")
    return create_app(batcher, tok, template, settings), batcher


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ThreadedServer:
    """uvicorn in a background thread (tests, benchmarks); `stop()` shuts it down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                                    access_log=False, limit_concurrency=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ThreadedServer":
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > timeout or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_server(target: str, host: str, port: int, opts: ServeOptions) -> None:
    """Serve in the foreground. The default bind is 127.0.0.1 (deploy.host): reachable from other
    machines only when asked for, and then a missing API key is warned about."""
    import uvicorn

    from ..utils.console import warn

    app, _ = build_app(target, opts)
    if host not in LOOPBACK and not (opts.api_key or os.environ.get(API_KEY_ENV)):
        warn(f"serving on {host} without an API key: anyone who can reach port {port} can use the model "
             f"(set --api-key or {API_KEY_ENV})")
    uvicorn.run(app, host=host, port=port, log_level="info")
