"""The OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/models, /health.

Chat replies of reasoning models carry the reasoning apart from the answer, as DeepSeek's API does:
`message.reasoning_content` beside `message.content`, and streamed `delta.reasoning_content` chunks
before the `delta.content` ones (data/reasoning.py splits the text; the R1 template opens the
`<think>` block in the prompt).

Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}` so the `openai`
client raises its usual exceptions: 400 bad JSON / invalid fields / a prompt, max_tokens or n above
this server's limits (`param` names the field), 401 missing or wrong API key (compared in constant
time), 404 unknown model, 413 body too large (serve/limits.py), 503 queue full (with Retry-After).
Streaming answers are server-sent events (`data: {chunk}` lines ending with `data: [DONE]`). A client
that goes away, streaming or not, cancels its request: its batch row leaves at the next decode step.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.reasoning import ReasoningStream, split_generation
from .batcher import DynamicBatcher, GenRequest, QueueFullError
from .limits import BodyLimit


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send many optional OpenAI fields we do not use
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = ""


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)


@dataclass
class ServeSettings:
    model_name: str
    context_length: int
    max_tokens_cap: int = 512
    default_max_tokens: int = 128
    api_key: str | None = None
    max_prompt_tokens: int | None = None  # None: the context length minus one completion token
    max_body_bytes: int = 1 << 20
    disconnect_poll_s: float = 0.25       # how often a non-streaming request checks that its client is there

    @property
    def prompt_cap(self) -> int:
        return min(self.max_prompt_tokens or self.context_length - 1, self.context_length - 1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=headers)


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def create_app(batcher: DynamicBatcher, tok, template, settings: ServeSettings) -> FastAPI:
    """`template` is a seektune ChatTemplate (renders the chat prompt exactly as training did)."""

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="seektune server", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    started = int(time.time())
    key_digest = hashlib.sha256(settings.api_key.encode()).digest() if settings.api_key else None

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    def check_key(request: Request) -> None:
        if not settings.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not given:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        # digests of equal length: the comparison takes the same time whatever the key's length or prefix
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), key_digest):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    async def parse(request: Request, cls):
        check_key(request)
        raw = await request.body()
        try:
            data = json.loads(raw or b"")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        try:
            body = cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ApiError(400, f"invalid field '{loc}': {first['msg']}", param=loc) from None
        if body.model != settings.model_name:
            raise ApiError(404, f"the model '{body.model}' does not exist; this server serves "
                                f"'{settings.model_name}' (see /v1/models)", code="model_not_found", param="model")
        if body.n != 1:
            raise ApiError(400, f"n={body.n} is above this server's limit of 1 (one choice per request; send "
                                "several requests instead)", param="n", code="too_many_choices")
        return body

    def check_prompt(n_tokens: int, field: str, which: str = "the prompt") -> None:
        if n_tokens > settings.prompt_cap:
            raise ApiError(400, f"{field}: {which} has {n_tokens} tokens, above this server's limit of "
                                f"{settings.prompt_cap} prompt tokens", param=field, code="prompt_too_long")

    def make_request(body: _Body, prompt_ids: list[int], field: str) -> GenRequest:
        max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
        if max_tokens > settings.max_tokens_cap:
            name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(400, f"{name}={max_tokens} is above this server's limit of "
                                f"{settings.max_tokens_cap}", param=name, code="too_many_tokens")
        if len(prompt_ids) + max_tokens > settings.context_length:
            raise ApiError(400, f"this model's maximum context length is {settings.context_length} tokens; the "
                                f"request asks for {len(prompt_ids)} prompt + {max_tokens} completion tokens",
                           param=field, code="context_length_exceeded")
        check_prompt(len(prompt_ids), field)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return GenRequest(prompt_ids, max_tokens, body.temperature, body.top_p, [s for s in stop if s], body.seed)

    def submit(req: GenRequest) -> None:
        try:
            batcher.submit(req)
        except QueueFullError as e:
            raise ApiError(503, str(e), type_="server_error", code="queue_full", retry_after=1) from None

    async def collect(req: GenRequest, request: Request) -> tuple[str, dict]:
        """The whole answer; gives up (and frees the batch row) as soon as the client has gone."""
        parts = []
        getter = asyncio.ensure_future(req.events.get())
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=settings.disconnect_poll_s)
                if loop.time() - checked >= settings.disconnect_poll_s:  # tokens may arrive faster than that
                    checked = loop.time()
                    if await request.is_disconnected():
                        raise ApiError(499, "client closed the request", code="client_closed")
                if not done:
                    continue
                kind, value = getter.result()
                if kind == "delta":
                    parts.append(value)
                    getter = asyncio.ensure_future(req.events.get())
                elif kind == "done":
                    return "".join(parts), value
                else:
                    raise ApiError(500, value, type_="server_error")
        finally:
            getter.cancel()
            req.cancelled = True  # a client that went away stops costing decode steps

    def usage(info: dict) -> dict:
        return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
                "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    opens_think = bool(getattr(template, "opens_think", False))

    async def stream(req: GenRequest, rid: str, obj: str, chat: bool, include_usage: bool):
        created = int(time.time())
        splitter = ReasoningStream(opens_think) if chat else None

        def chunk(delta: str | None, finish=None, role=False, kind: str = "content"):
            if chat:
                d = {"role": "assistant", "content": ""} if role else ({kind: delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": settings.model_name, "choices": [choice]}

        try:
            if chat:
                yield sse(chunk(None, role=True))
            while True:
                kind, value = await req.events.get()
                if kind == "delta":
                    if splitter is None:
                        yield sse(chunk(value))
                    else:
                        for part, text in splitter.feed(value):
                            yield sse(chunk(text, kind="reasoning_content" if part == "reasoning" else "content"))
                elif kind == "done":
                    for part, text in (splitter.flush() if splitter is not None else []):
                        yield sse(chunk(text, kind="reasoning_content" if part == "reasoning" else "content"))
                    yield sse(chunk(None, finish=_finish(value)))
                    if include_usage:
                        yield sse({"id": rid, "object": obj, "created": created, "model": settings.model_name,
                                   "choices": [], "usage": usage(value)})
                    break
                else:
                    yield sse({"error": {"message": value, "type": "server_error"}})
                    break
            yield "data: [DONE]\n\n"
        finally:
            req.cancelled = True

    def _finish(info: dict) -> str:
        return "length" if info["finish_reason"] == "length" else "stop"

    def _include_usage(request_json: dict) -> bool:
        opts = request_json.get("stream_options") or {}
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "queue_depth": batcher.depth,
                "queue_size": batcher.queue_size, "max_batch": batcher.max_batch,
                "window_ms": batcher.window * 1000, "stats": batcher.stats.as_dict()}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": started,
                                             "owned_by": "seektune"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await parse(request, ChatBody)
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                for m in body.messages]
        prompt = template.prompt(msgs)
        req = make_request(body, tok(prompt, add_special_tokens=False)["input_ids"], "messages")
        submit(req)
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        if body.stream:
            return StreamingResponse(stream(req, rid, "chat.completion.chunk", True,
                                            _include_usage(json.loads(await request.body()))),
                                     media_type="text/event-stream")
        text, info = await collect(req, request)
        reasoning, answer = split_generation(text, opens_think)
        message = {"role": "assistant", "content": answer}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": settings.model_name,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": _finish(info)}], "usage": usage(info)}

    async def score(body: CompletionBody):
        """echo + logprobs with at most one new token: the prompt's own log-probabilities (benchmarks)."""
        if not body.echo or body.logprobs is None:
            raise ApiError(400, "logprobs are returned for the prompt only: send echo=true with logprobs "
                                "(and max_tokens 1)", param="echo" if not body.echo else "logprobs")
        if (body.max_tokens or 1) > 1 or body.stream:
            raise ApiError(400, "echo with logprobs scores the prompt: max_tokens must be 1, without stream",
                           param="max_tokens")
        p = body.prompt
        if isinstance(p, str):
            prompts = [tok(p, add_special_tokens=False)["input_ids"]]
        elif p and isinstance(p[0], int):
            prompts = [list(p)]
        elif p and isinstance(p[0], str):
            prompts = [tok(x, add_special_tokens=False)["input_ids"] for x in p]
        else:
            prompts = [list(x) for x in p]
        vocab = len(tok)
        for i, ids in enumerate(prompts):
            if not ids:
                raise ApiError(400, f"prompt {i} is empty", param="prompt")
            if len(ids) + 1 > settings.context_length:
                raise ApiError(400, f"prompt {i} has {len(ids)} tokens; this model's context is "
                                    f"{settings.context_length}", param="prompt", code="context_length_exceeded")
            check_prompt(len(ids), "prompt", f"prompt {i}")
            if min(ids) < 0 or max(ids) >= vocab:
                raise ApiError(400, f"prompt {i} holds token ids outside 0..{vocab - 1}", param="prompt")
        outs = await batcher.score(prompts, body.logprobs)
        n_prompt = sum(o["prompt_tokens"] for o in outs)
        return {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": int(time.time()),
                "model": settings.model_name,
                "choices": [{"index": i, "text": o["text"], "finish_reason": "length",
                             "logprobs": {k: o[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}}
                            for i, o in enumerate(outs)],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(outs), "total_tokens": n_prompt + len(outs)}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionBody)
        prompt = body.prompt
        if body.echo or body.logprobs is not None:
            return await score(body)
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
            raise ApiError(400, "token-id prompts are accepted for scoring (echo with logprobs) only", param="prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "send one prompt per request (a list of exactly one string)", param="prompt")
            prompt = prompt[0]
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        req = make_request(body, ids, "prompt")
        submit(req)
        rid = "cmpl-" + uuid.uuid4().hex[:24]
        if body.stream:
            return StreamingResponse(stream(req, rid, "text_completion", False,
                                            _include_usage(json.loads(await request.body()))),
                                     media_type="text/event-stream")
        text, info = await collect(req, request)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": settings.model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(info)}],
                "usage": usage(info)}

    return app
