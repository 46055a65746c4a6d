"""`seektune serve --engine auto|hf|vllm`: the vLLM backend (serve/vllm_engine.py) behind the same OpenAI API.

vLLM needs CUDA, so it is not installed here. What is tested: the missing-vLLM and no-GPU errors
(exit 2 naming `pip install vllm`), that `auto` falls back to the HF engine, and, with a fake `vllm`
module in sys.modules (an engine that streams a fixed token-id sequence as vLLM's cumulative
RequestOutputs, stopping on `stop_token_ids` and `max_tokens` as vLLM does), that the app served by
VllmEngine answers with the right text, honours stop strings, max_tokens, streaming and the
`reasoning_content` split, aborts what it finishes first or what a client leaves, and builds the
SamplingParams it should. The tiny model is the preset the other serve tests use (tiny-qwen2: the
DeepSeek-R1 tokenizer, whose template opens <think> in the prompt).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import types
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import openai
import pytest

from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.data.reasoning import split_generation
from seektune.data.templates import get_template
from seektune.export.errors import ExportError
from seektune.serve import vllm_engine
from seektune.serve.batcher import Engine, GenRequest
from seektune.serve.server import ServeOptions, ThreadedServer, build_app, choose_engine, load_for_serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "vllm-key"
NAME = "tiny"
HELLO = [{"role": "user", "content": "Say hello to the clinic."}]
REPLY = "Let me think.\n</think>\n\nThe answer is 42."
FAIL = 10 ** 9  # a prompt starting with this id makes the fake engine fail the request


# ---- a fake `vllm`: the names and shapes seektune uses, as vLLM documents them ---------------------

class _Kw:
    def __init__(self, **kw):
        self.kw = kw
        self.__dict__.update(kw)


class SamplingParams(_Kw):
    pass


class AsyncEngineArgs(_Kw):
    pass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    prompt_logprobs: list | None
    outputs: list
    finished: bool


class FakeAsyncLLM:
    """Streams `script` (token ids) one per step as cumulative RequestOutputs (the same list object,
    grown in place); finishes "stop" on a stop token id (included, as vLLM returns it) and "length" at
    max_tokens; past the script it waits to be aborted. Records every call."""

    instances: list = []

    def __init__(self, args):
        self.args = args
        self.model_config = SimpleNamespace(max_model_len=args.max_model_len or 4096)
        self.script: list[int] = []
        self.delay = 0.0
        self.requests: dict[str, tuple[list[int], SamplingParams]] = {}
        self.order: list[str] = []
        self.produced: dict[str, int] = {}
        self.aborted: list[str] = []
        self.closed: list[str] = []  # generators that ended without finishing (cancelled)
        self.threads: set[str] = set()
        self.in_flight = self.most = 0
        self.shut = False

    @classmethod
    def from_engine_args(cls, engine_args):
        e = cls(engine_args)
        cls.instances.append(e)
        return e

    async def generate(self, prompt, sampling_params, request_id):
        assert set(prompt) == {"prompt_token_ids"} and request_id not in self.requests
        ids, sp = list(prompt["prompt_token_ids"]), sampling_params
        self.requests[request_id] = (ids, sp)
        self.order.append(request_id)
        self.threads.add(threading.current_thread().name)
        if ids and ids[0] == FAIL:
            raise ValueError("the fake engine refuses this prompt")
        if sp.kw.get("prompt_logprobs") is not None:
            yield self._scored(request_id, ids)
            return
        out: list[int] = []
        finished = False
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            for t in list(self.script):
                await asyncio.sleep(self.delay)
                out.append(t)
                self.produced[request_id] = len(out)
                reason = ("stop" if t in (sp.stop_token_ids or ()) else
                          "length" if len(out) >= sp.max_tokens else None)
                finished = reason is not None
                yield RequestOutput(request_id, None, ids, None,
                                    [CompletionOutput(0, "", out, None, None, reason)], finished)
                if finished:
                    return
            await asyncio.Event().wait()  # a real engine would go on decoding: wait for the abort
        finally:
            self.in_flight -= 1
            if not finished:
                self.closed.append(request_id)

    @staticmethod
    def _scored(rid, ids):
        """Prompt logprobs: position i (>= 1) scores ids[i] at -0.5 * i (rank 2) beside ids 7 (-0.1, rank 1)
        and 8 (-3.0, rank 3); the greedy next token is 9."""
        plp = [None] + [{ids[i]: Logprob(-0.5 * i, 2), 7: Logprob(-0.1, 1), 8: Logprob(-3.0, 3)}
                        for i in range(1, len(ids))]
        gen = CompletionOutput(0, "", [9], -0.2, [{9: Logprob(-0.2, 1), 7: Logprob(-1.0, 2), 8: Logprob(-4.0, 3)}],
                               "length")
        return RequestOutput(rid, None, ids, plp, [gen], True)

    async def abort(self, request_id):
        await asyncio.sleep(0)
        self.aborted.append(request_id)

    def shutdown(self):
        self.shut = True


def fake_vllm_module() -> types.ModuleType:
    m = types.ModuleType("vllm")
    m.__version__ = "0.0.fake"
    m.SamplingParams, m.AsyncEngineArgs, m.AsyncLLMEngine = SamplingParams, AsyncEngineArgs, FakeAsyncLLM
    return m


def _cli(args):
    from typer.testing import CliRunner

    from seektune.cli import app

    res = CliRunner().invoke(app, args)
    return res.exit_code, " ".join(res.output.split())


# ---- without vLLM (this machine) -------------------------------------------------------------------

def test_engine_vllm_without_vllm_exits_2_naming_pip_install_vllm(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is absent
    why = vllm_engine.missing()
    assert "vLLM is not installed" in why and "pip install vllm" in why and "CUDA GPU" in why
    code, out = _cli(["serve", "tiny-qwen2", "--engine", "vllm", "--port", "1"])
    assert code == 2 and "pip install vllm" in out and "needs a CUDA GPU" in out and "--engine vllm" in out, out

    # installed, but no GPU visible: the same exit, saying so
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    monkeypatch.setattr(vllm_engine, "_cuda_visible", lambda: False)
    code, out = _cli(["serve", "tiny-qwen2", "--engine", "vllm", "--port", "1"])
    assert code == 2 and "no CUDA GPU is visible" in out and "pip install vllm" in out, out

    # a .gguf is llama.cpp's whatever is installed: --engine vllm (or hf) with one is an error naming why
    monkeypatch.setattr(vllm_engine, "_cuda_visible", lambda: True)
    fake = tmp_path / "med.q4_k_m.gguf"
    fake.write_bytes(b"GGUF")
    for engine in ("vllm", "hf"):
        code, out = _cli(["serve", str(fake), "--engine", engine, "--port", "1"])
        assert code == 2 and "is a GGUF, which llama.cpp serves" in out and "HF model folder" in out, out
    code, out = _cli(["serve", "tiny-qwen2", "--engine", "tensorrt", "--port", "1"])
    assert code == 2 and "not one of auto, hf, vllm" in out, out


def test_auto_falls_back_to_the_hf_engine_here(monkeypatch, capsys):
    if vllm_engine.missing() is None:
        pytest.skip("vLLM and a CUDA GPU are here: auto would serve with vLLM")
    assert "pip install vllm" in vllm_engine.missing()
    loaded = load_for_serving("tiny-qwen2")  # engine="auto", the CLI's default
    assert loaded.backend == "hf" and loaded.engine is None and loaded.model is not None
    err = capsys.readouterr().err
    assert "engine HF" in err and "vLLM not used" in err and "pip install vllm" in err, err
    app, batcher = build_app(loaded, ServeOptions(model_name=NAME, max_tokens=4, context_length=64))
    assert type(batcher.engine) is Engine and "engine hf" in capsys.readouterr().err

    # the choice itself, for every case that needs no model
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert choose_engine("tiny-qwen2", "auto")[0] == "hf" and choose_engine("tiny-qwen2", "hf") == ("hf", "")
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    monkeypatch.setattr(vllm_engine, "_cuda_visible", lambda: False)
    use, why = choose_engine("tiny-qwen2", "auto")
    assert use == "hf" and "no CUDA GPU" in why
    monkeypatch.setattr(vllm_engine, "_cuda_visible", lambda: True)
    assert choose_engine("tiny-qwen2", "auto") == ("vllm", "")
    assert choose_engine("x.gguf", "auto") == ("llama.cpp", "")
    adapter = SimpleNamespace(kind="adapter", path="runs/med/final", run_dir="runs/med")
    use, why = choose_engine("runs/med", "auto", adapter)
    assert use == "hf" and "adapter" in why
    with pytest.raises(ExportError, match="seektune export runs/med"):
        choose_engine("runs/med", "vllm", adapter)


# ---- VllmEngine on the fake vllm -------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_vllm():
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "vllm", fake_vllm_module())
    mp.setattr(vllm_engine, "_cuda_visible", lambda: True)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def hf():
    return load_for_serving("tiny-qwen2", engine="hf")


@pytest.fixture(scope="module")
def loaded(fake_vllm, hf):
    lo = load_for_serving("tiny-qwen2", engine="vllm", gpu_memory_utilization=0.5, max_model_len=512)
    yield lo
    lo.engine.close()
    assert lo.engine.llm.shut and not lo.engine.thread.is_alive()


@pytest.fixture(scope="module")
def server(loaded):
    app, batcher = build_app(loaded, ServeOptions(api_key=KEY, model_name=NAME, max_tokens=400, max_batch=8))
    s = ThreadedServer(app).start()
    s.batcher = batcher
    yield s
    s.stop()


@pytest.fixture
def fake(loaded, hf):
    llm = loaded.engine.llm
    llm.delay = 0.0
    llm.script = hf.tok(REPLY, add_special_tokens=False)["input_ids"] + [hf.tok.eos_token_id]
    return llm


def client(s, key=KEY):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, timeout=60)


def chat_ids(lo, msgs) -> list[int]:
    text = get_template(lo.template, lo.tok).prompt(msgs)
    return lo.tok(text, add_special_tokens=False)["input_ids"]


def health(s) -> dict:
    return httpx.get(s.url + "/health", timeout=30).json()["stats"]


def _wait(cond, timeout=20.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_loading_builds_vllm_from_the_folder_with_the_hf_paths_tokenizer_and_eos(loaded, hf):
    llm = loaded.engine.llm
    assert loaded.backend == "vllm" and loaded.model is None and loaded.context_length == 512
    args = llm.args.kw
    from seektune.export.source import resolve_source

    path = str(resolve_source("tiny-qwen2").path)
    assert args["model"] == path and args["tokenizer"] == path and args.get("trust_remote_code", False) is False  # vLLM's default: no remote code
    assert args["gpu_memory_utilization"] == 0.5 and args["max_model_len"] == 512
    assert "through vLLM 0.0.fake" in loaded.describe and loaded.template == hf.template == "auto"
    assert loaded.engine.eos_ids == Engine(hf.model, hf.tok).eos_ids  # stops where the HF engine stops
    assert chat_ids(loaded, HELLO) == chat_ids(hf, HELLO)  # the same prompt ids


def test_chat_answers_with_the_reasoning_split_and_the_sampling_params_it_maps(server, loaded, hf, fake):
    c = client(server)
    r = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=30, temperature=0, top_p=0.5, seed=3)
    reasoning, answer = split_generation(REPLY, True)
    assert (reasoning, answer) == ("Let me think.", "The answer is 42.")
    assert r.choices[0].message.reasoning_content == reasoning and r.choices[0].message.content == answer
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == len(fake.script) - 1  # eos not counted
    rid = fake.order[-1]
    ids, sp = fake.requests[rid]
    assert ids == chat_ids(hf, HELLO) and r.usage.prompt_tokens == len(ids)
    # greedy: temperature 0, top_p 1 and no seed whatever the request said
    assert sp.kw == {"n": 1, "temperature": 0.0, "top_p": 1.0, "seed": None, "max_tokens": 30,
                     "stop_token_ids": sorted(loaded.engine.eos_ids), "detokenize": False}
    assert rid not in fake.aborted  # vLLM finished it (eos) itself
    assert fake.threads == {"seektune-vllm"}  # vLLM's coroutines run on its own loop

    s = c.completions.create(model=NAME, prompt="Once upon a time", max_tokens=4, temperature=0.7, top_p=0.9, seed=5)
    sp = fake.requests[fake.order[-1]][1]
    assert (sp.temperature, sp.top_p, sp.seed, sp.max_tokens) == (0.7, 0.9, 5, 4)
    assert s.choices[0].text == hf.tok.decode(fake.script[:4], skip_special_tokens=True)


def test_max_tokens_and_stop_strings(server, hf, fake):
    c = client(server)
    r = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    cut_off = split_generation(hf.tok.decode(fake.script[:3], skip_special_tokens=True), True)
    assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == cut_off
    assert fake.order[-1] not in fake.aborted and fake.produced[fake.order[-1]] == 3  # vLLM stopped at max_tokens

    fake.delay = 0.02  # vLLM is still decoding when the stop string shows
    s = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=30, temperature=0, stop=["answer"])
    cut = REPLY.find("answer")
    reasoning, answer = split_generation(REPLY[:cut], True)
    assert s.choices[0].message.reasoning_content == reasoning and s.choices[0].message.content == answer
    assert s.choices[0].finish_reason == "stop" and answer.strip() == "The"
    rid = fake.order[-1]
    _wait(lambda: rid in fake.aborted and rid in fake.closed)  # seektune stopped first: aborted in vLLM
    assert fake.produced[rid] < len(fake.script) - 1


def test_streamed_deltas_add_up_to_the_whole_answer(server, hf, fake):
    c = client(server)
    whole = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=30, temperature=0)
    chunks = list(c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=30, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    thought = [getattr(ch.choices[0].delta, "reasoning_content", None) for ch in chunks if ch.choices]
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert len([t for t in thought if t]) >= 2 and len([t for t in content if t]) >= 2
    assert "".join(t or "" for t in thought) == whole.choices[0].message.reasoning_content
    assert "".join(t or "" for t in content) == whole.choices[0].message.content
    first_answer = next(i for i, t in enumerate(content) if t)
    assert not any(thought[first_answer:])  # reasoning chunks come before the answer's
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    text = c.completions.create(model=NAME, prompt="Once upon a time", max_tokens=30, temperature=0).choices[0].text
    pieces = [ch.choices[0].text for ch in c.completions.create(model=NAME, prompt="Once upon a time", max_tokens=30,
                                                                temperature=0, stream=True)]
    assert text == REPLY and "".join(pieces) == text and len([p for p in pieces if p]) >= 2


def test_a_client_that_leaves_mid_stream_is_aborted_in_vllm(server, hf, fake):
    fake.script = hf.tok(" la" * 400, add_special_tokens=False)["input_ids"][:400]
    fake.delay = 0.02  # 8 s for the whole script
    before = health(server)["cancelled"]
    body = {"model": NAME, "messages": HELLO, "max_tokens": 380, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
        got = 0
        for line in resp.iter_lines():
            if line.startswith("data: {") and "reasoning_content" in line:
                got += 1
                if got == 3:
                    break  # the client goes away
    rid = fake.order[-1]
    _wait(lambda: rid in fake.aborted and rid in fake.closed)
    _wait(lambda: health(server)["cancelled"] - before == 1)
    assert fake.produced[rid] < 200


def test_echo_logprobs_come_from_vllms_prompt_logprobs(server, hf, fake):
    ids = hf.tok("Hello there, how are you", add_special_tokens=False)["input_ids"]
    assert not set(ids) & {7, 8, 9}
    r = client(server).completions.create(model=NAME, prompt=ids, max_tokens=1, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == [None] + [-0.5 * i for i in range(1, len(ids))] + [-0.2]
    dec = lambda t: hf.tok.decode([t])  # noqa: E731
    assert lp.top_logprobs[0] is None and lp.top_logprobs[1] == {dec(7): -0.1, dec(ids[1]): -1 * 0.5}
    assert lp.top_logprobs[-1] == {dec(9): -0.2, dec(7): -1.0}
    assert lp.tokens == [dec(t) for t in ids + [9]] and r.usage.prompt_tokens == len(ids)
    sp = fake.requests[fake.order[-1]][1]
    assert (sp.prompt_logprobs, sp.logprobs, sp.max_tokens, sp.temperature) == (2, 2, 1, 0.0)


def test_api_key_is_required(server, fake):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": NAME, "messages": HELLO, "max_tokens": 2},
                   timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").chat.completions.create(model=NAME, messages=HELLO, max_tokens=2)


class _Req(GenRequest):
    """Collects its events on the calling thread (Engine.run called directly, no batcher)."""

    def emit(self, kind, value):
        self.__dict__.setdefault("got", []).append((kind, value))
        if kind == "delta" and getattr(self, "cancel_after", None) == sum(k == "delta" for k, _ in self.got):
            self.cancelled = True


def test_requests_join_while_others_run_and_cancelled_or_failing_ones_end_alone(loaded, hf, fake):
    eng = loaded.engine
    fake.script = hf.tok(" la" * 40, add_special_tokens=False)["input_ids"][:40]
    fake.delay = 0.005
    ids = chat_ids(hf, HELLO)
    first, joiner, bad = _Req(ids, 8), _Req(ids, 5), _Req([FAIL, 1, 2], 5)
    calls = []

    def take_more(n):
        calls.append(n)
        return [joiner, bad] if len(calls) == 1 else []

    fake.most = 0
    counts = eng.run([first], take_more, max_batch=4)
    assert calls[0] == 3  # max_batch minus the one in flight
    assert fake.most == 2  # the joiner decoded beside the first request
    for r, n in ((first, 8), (joiner, 5)):
        assert r.got[-1] == ("done", {"finish_reason": "length", "prompt_tokens": len(ids), "completion_tokens": n})
        assert "".join(v for k, v in r.got if k == "delta") == hf.tok.decode(fake.script[:n], skip_special_tokens=True)
    assert [k for k, _ in bad.got] == ["error"] and "refuses this prompt" in bad.got[0][1]
    assert counts["requests"] == 3 and counts["largest"] == 3 and counts["cancelled"] == 0  # all three sent at once

    leaver = _Req(ids, 30)
    leaver.cancel_after = 2
    cancelled = []
    counts = eng.run([leaver], on_cancel=lambda: cancelled.append(1))
    rid = fake.order[-1]
    assert leaver.got[-1] == ("done", {"finish_reason": "cancelled", "prompt_tokens": len(ids),
                                          "completion_tokens": 2})
    assert counts["cancelled"] == 1 and cancelled == [1]
    _wait(lambda: rid in fake.aborted and rid in fake.closed)
    # a client that leaves before its first token (vLLM still prefilling, or queued behind others)
    fake.delay = 5.0
    slow = _Req(ids, 5)
    done = threading.Event()
    t = threading.Thread(target=lambda: (eng.run([slow]), done.set()))
    t.start()
    _wait(lambda: fake.order[-1] != rid)  # sent to vLLM, no token yet
    slow.cancelled = True
    assert done.wait(2.0), "a cancelled request waited for a token to leave"
    t.join()
    assert slow.got == [("done", {"finish_reason": "cancelled", "prompt_tokens": len(ids), "completion_tokens": 0})]
    _wait(lambda: fake.order[-1] in fake.aborted)

    gone = _Req(ids, 5)
    gone.cancelled = True  # its client left while it waited: never sent to vLLM
    n = len(fake.order)
    assert eng.run([gone])["cancelled"] == 1 and len(fake.order) == n
    assert gone.got == [("done", {"finish_reason": "cancelled", "prompt_tokens": len(ids), "completion_tokens": 0})]
    assert json.dumps(counts)  # plain counts, as Engine.run returns
