"""Build the server for a run/model folder or a GGUF file and run it with uvicorn (foreground or in a thread).

A `.gguf` is decoded by llama.cpp (llamacpp_engine.py), one request at a time. A model folder is
decoded by vLLM (vllm_engine.py) where it is installed and a CUDA GPU is visible, else by the HF
engine with continuous batching (batcher.py); `engine` ("auto", "hf", "vllm") chooses. All of them
sit behind the same app (app.py)."""

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
from ..utils.console import log, warn
from .app import ServeSettings, create_app
from .batcher import DynamicBatcher, Engine

API_KEY_ENV = "SEEKTUNE_API_KEY"
ENGINES = ("auto", "hf", "vllm")


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
    engine: str = "auto"                  # auto | hf | vllm (a .gguf is always llama.cpp's)
    gpu_memory_utilization: float | None = None  # vLLM: share of GPU memory it takes (0.9)
    max_model_len: int | None = None      # vLLM: context it allocates the KV cache for (the model's)


@dataclass
class Loaded:
    """A model ready to serve; one Loaded can back several apps (tests, on/off benchmarks)."""
    model: object             # the HF model (None for a GGUF)
    tok: object
    name: str
    template: str             # "" when none is known (a GGUF without one): --template must say
    describe: str
    engine: object | None = None          # a GGUF's LlamaCppEngine, a VllmEngine; None: Engine(model, tok)
    context_length: int | None = None     # llama.cpp's or vLLM's context (their KV cache is allocated for it)
    backend: str = "hf"                   # which engine decodes: hf | llama.cpp | vllm


def is_gguf(target) -> bool:
    return str(target).lower().endswith(".gguf")


def choose_engine(target, engine: str = "auto", src=None) -> tuple[str, str]:
    """(the engine that serves `target`: "llama.cpp", "hf" or "vllm"; why vLLM is not used, or "").
    ExportError when the engine asked for cannot serve it: `--engine vllm` without vLLM or a GPU, or
    for a .gguf or an adapter."""
    if engine not in ENGINES:
        raise ExportError(f"--engine {engine}: not one of {', '.join(ENGINES)}")
    if is_gguf(target):
        if engine != "auto":
            raise ExportError(f"--engine {engine}: {target} is a GGUF, which llama.cpp serves; vLLM and the HF engine "
                              f"serve an HF model folder (the merged hf/ folder beside the GGUF): serve that, or "
                              f"drop --engine")
        return "llama.cpp", ""
    if engine == "hf":
        return "hf", ""
    from .vllm_engine import missing

    why = missing()
    if why:
        if engine == "vllm":
            raise ExportError(f"--engine vllm: {why}; or serve with the HF engine (--engine hf)")
        return "hf", f"vLLM not used: {why}"
    if src is not None and src.kind == "adapter":
        if engine == "vllm":
            raise ExportError(f"--engine vllm: {src.path} is a LoRA adapter and vLLM serves a merged model folder: "
                              f"`seektune export {src.run_dir or src.path} --out DIR`, then serve DIR (or --engine hf)")
        return "hf", "vLLM not used: an adapter is merged into its base in memory, which the HF engine does"
    return "vllm", ""


def load_for_serving(target: str, threads: int | None = None, context_length: int | None = None,
                     engine: str = "auto", gpu_memory_utilization: float | None = None,
                     max_model_len: int | None = None, parallel: int = 1) -> Loaded:
    """Load the model of `target` with any LoRA merged (merged weights decode faster). A .gguf file is
    loaded into llama.cpp with `threads` and a context of its own length capped at `context_length`.
    A model folder goes to vLLM (`gpu_memory_utilization`, `max_model_len`) when `engine` says so, or
    says "auto" and vLLM can run here; else to the HF engine."""
    if is_gguf(target):
        choose_engine(target, engine)  # --engine hf|vllm with a GGUF: refused
        from .llamacpp_engine import load_gguf

        eng, name, template, describe, ctx = load_gguf(target, threads, context_length, parallel)
        return Loaded(None, eng.tok, name, template, describe, engine=eng, context_length=ctx, backend="llama.cpp")
    if engine not in ENGINES:
        choose_engine(target, engine)  # refused before anything loads
    src = resolve_source(target)
    use, why = choose_engine(target, engine, src)
    if use == "vllm":
        from .vllm_engine import load_vllm

        try:
            eng, describe, ctx = load_vllm(src, gpu_memory_utilization, max_model_len)
        except Exception as e:  # noqa: BLE001 - auto: vLLM could not load it (an architecture it lacks...)
            if engine == "vllm":
                raise
            why = f"vLLM could not load it ({type(e).__name__}: {e})"
            warn(f"serve: {why}; serving with the HF engine instead (--engine vllm makes this an error)")
        else:
            log(f"serve: engine vLLM for {target}")
            return Loaded(None, eng.tok, src.name, src.template, describe, engine=eng, context_length=ctx,
                          backend="vllm")
    log(f"serve: engine HF (transformers) for {target}" + (f"; {why}" if why else ""))
    model, tok = load_causal_lm(src, merge=True)
    return Loaded(model, tok, src.name, src.template, src.describe())


def build_app(target: str | Loaded, opts: ServeOptions):
    """Return (FastAPI app, batcher) serving `target` (a path/preset, or an already Loaded model)."""
    if opts.threads and not is_gguf(target):  # a GGUF's llama.cpp threads are set when it loads
        torch.set_num_threads(opts.threads)
    loaded = target if isinstance(target, Loaded) else load_for_serving(
        target, opts.threads, opts.context_length, opts.engine, opts.gpu_memory_utilization, opts.max_model_len,
        parallel=opts.max_batch)
    model, tok = loaded.model, loaded.tok
    if not (opts.template or loaded.template):
        raise ExportError(f"{loaded.describe}: no chat template (neither an hf/ folder beside the GGUF nor "
                          f"tokenizer.chat_template in it); pass --template (deepseek-v3, deepseek-r1, chatml)")
    template = get_template(opts.template or loaded.template, tok)
    if loaded.engine is not None:  # llama.cpp's or vLLM's context was fixed when the model was loaded
        ctx = min(opts.context_length or loaded.context_length, loaded.context_length)
    else:
        ctx = opts.context_length or int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    key = opts.api_key if opts.api_key is not None else os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(opts.model_name or loaded.name, ctx, opts.max_tokens,
                             min(opts.default_max_tokens, opts.max_tokens), key, opts.max_prompt_tokens,
                             opts.max_body_bytes)
    engine = loaded.engine or Engine(model, tok)
    batcher = DynamicBatcher(engine, opts.max_batch, opts.window_ms, opts.queue_size)
    if loaded.backend == "llama.cpp":
        n = getattr(loaded.engine, "parallel", 1)
        decoding = (f"llama.cpp decodes up to {n} requests together (--max-batch), sharing one KV cache of {ctx}"
                    if n > 1 else "llama.cpp decodes one request at a time (--max-batch 1)")
    elif loaded.backend == "vllm":
        decoding = f"vLLM batches continuously, up to {opts.max_batch} requests in flight (--max-batch)"
    else:
        decoding = f"batching up to {opts.max_batch} within {opts.window_ms:g} ms; threads {torch.get_num_threads()}"
    log(f"serve: engine {loaded.backend}: {loaded.describe} as '{settings.model_name}'; template {template.name}; "
        f"context {ctx}; "
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
