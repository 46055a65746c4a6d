"""`seektune serve OUT/NAME.QUANT.gguf`: llama.cpp behind the same OpenAI API (serve/llamacpp_engine.py).

One f16 GGUF of a tiny 2-layer Llama (SmolLM2's tokenizer and ChatML template) is exported per module
(~10 s) and served by the real server in a thread. The answers are checked against llama.cpp run
directly on the same prompt ids (export/gguf/llamacpp.Runner) and, where the merged HF model's
greedy choice is not a near-tie that f16 rounding may flip, against that model too. Skips naming the
install step when llama-cpp-python or the GGUF converter is missing; the missing-llama.cpp error
itself is checked without either.
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.data.templates import get_template
from seektune.export.gguf import llamacpp
from seektune.serve.server import ServeOptions, ThreadedServer, build_app, load_for_serving
from test_export_gguf import NO_CONVERTER, NO_LLAMA_CPP, tiny_llama_run  # noqa: F401  (fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "gguf-key"
NAME = "tiny-gguf"
_skip = pytest.mark.skipif(NO_LLAMA_CPP is not None or NO_CONVERTER is not None,
                           reason=f"{NO_LLAMA_CPP or NO_CONVERTER}")


def needs_gguf(test):
    """The tests that serve the module's GGUF (exported once, ~10 s): slow, as the GGUF export tests."""
    return pytest.mark.slow(_skip(test))

HELLO = [{"role": "user", "content": "Say hello to the clinic."}]


@pytest.fixture(scope="module")
def gguf(tiny_llama_run, tmp_path_factory):  # noqa: F811
    from seektune.export.gguf.pipeline import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "out"
    rep = export_gguf(tiny_llama_run, out, "f16")
    return out / rep["gguf"]


@pytest.fixture(scope="module")
def loaded(gguf):
    return load_for_serving(str(gguf), threads=1)


@pytest.fixture(scope="module")
def server(loaded):
    app, _ = build_app(loaded, ServeOptions(api_key=KEY, model_name=NAME, max_tokens=16))
    s = ThreadedServer(app).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def runner(gguf):
    r = llamacpp.Runner(gguf, n_ctx=256)
    yield r
    r.close()


def client(s, key=KEY):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, timeout=60)


def chat_ids(loaded, msgs) -> list[int]:
    """The prompt ids the app builds: OUT/hf's tokenizer and chat template, as HF serving builds them."""
    text = get_template(loaded.template, loaded.tok).prompt(msgs)
    return loaded.tok(text, add_special_tokens=False)["input_ids"]


@needs_gguf
def test_greedy_chat_is_llama_cpps_greedy_and_honours_max_tokens_and_stop(server, loaded, runner, gguf):
    tok = loaded.tok
    assert loaded.engine is not None and loaded.template == "auto"  # OUT/hf's tokenizer, its own template
    ref = runner.greedy(chat_ids(loaded, HELLO), 8)
    assert len(ref) == 8 and not set(ref[:6]) & loaded.engine.eos_ids, "precondition: no eos in the first 6"
    c = client(server)
    r = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=6, temperature=0)
    full = tok.decode(ref[:6], skip_special_tokens=True)
    assert full.strip() and r.choices[0].message.content == full
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens == len(chat_ids(loaded, HELLO))
    short = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=3, temperature=0)
    assert short.choices[0].message.content == tok.decode(ref[:3], skip_special_tokens=True)
    assert short.usage.completion_tokens == 3
    stop = tok.decode([ref[3]], skip_special_tokens=True).strip()
    cut = full.find(stop)
    assert stop and cut > 0, f"precondition: token 4 ({stop!r}) gives a stop string inside {full!r}"
    s = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=6, temperature=0, stop=[stop])
    assert s.choices[0].message.content == full[:cut] and s.choices[0].finish_reason == "stop"
    assert getattr(r.choices[0].message, "reasoning_content", None) is None  # ChatML: no <think> split

    # the merged HF model (OUT/hf) picks the same tokens wherever its choice is not a near-tie
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent / "hf"), dtype=torch.float32).eval()
    compared = 0
    for msgs in [HELLO] + [[{"role": "user", "content": q}] for q in ("What helps a headache?", "Hi", "Tell me more.")]:
        ids = list(chat_ids(loaded, msgs))
        served = runner.greedy(ids, 6)  # what the server answers is llama.cpp's greedy (checked above)
        with torch.no_grad():
            for want in served:
                top2 = hf(torch.tensor([ids])).logits[0, -1].topk(2)
                if float(top2.values[0] - top2.values[1]) < 0.05:  # f16 logits differ by up to ~0.02 here
                    break
                assert int(top2.indices[0]) == want
                ids.append(want)
                compared += 1
    assert compared >= 1, "every prompt's first choice was a near-tie for the HF model: add prompts"


@needs_gguf
def test_streamed_pieces_add_up_to_the_whole_answer(server):
    c = client(server)
    whole = c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=8, temperature=0)
    chunks = list(c.chat.completions.create(model=NAME, messages=HELLO, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = c.completions.create(model=NAME, prompt="Once upon a time", max_tokens=6, temperature=0).choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True))
    assert text and streamed == text


@needs_gguf
def test_seeded_sampling_is_reproducible_and_not_greedy(server):
    c = client(server)

    def ask(**kw):
        return c.completions.create(model=NAME, prompt="Once upon a time", max_tokens=8, **kw).choices[0].text

    a, b = ask(temperature=1.0, seed=3), ask(temperature=1.0, seed=3)
    assert a == b  # llama.cpp's sampler seeded with the request's seed
    assert a != ask(temperature=0)  # a near-uniform random model: sampling leaves the greedy path


@needs_gguf
def test_echo_logprobs_are_llama_cpps_prompt_logits(server, loaded, runner):
    ids = loaded.tok("Hello there, how are you", add_special_tokens=False)["input_ids"]
    r = client(server).completions.create(model=NAME, prompt=ids, max_tokens=1, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    want = torch.log_softmax(torch.from_numpy(runner.logits(ids)).double(), -1)
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    for i in range(1, len(ids)):
        assert abs(lp.token_logprobs[i] - float(want[i - 1, ids[i]])) < 1e-4
    assert len(lp.top_logprobs[1]) == 2 and r.usage.prompt_tokens == len(ids)
    again = client(server).chat.completions.create(model=NAME, messages=HELLO, max_tokens=4, temperature=0)
    assert again.choices[0].message.content  # generation after scoring starts from a clean cache


@needs_gguf
def test_concurrent_requests_are_decoded_one_at_a_time_each_as_if_alone(server):
    c = client(server)
    prompts = [[{"role": "user", "content": f"Question {i}: what helps a headache?"}] for i in range(3)]
    alone = [c.chat.completions.create(model=NAME, messages=m, max_tokens=5, temperature=0).choices[0].message.content
             for m in prompts]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda m: c.chat.completions.create(
            model=NAME, messages=m, max_tokens=5, temperature=0).choices[0].message.content, prompts))
    assert together == alone and len(set(alone)) > 1
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + "/health", timeout=10) as h:
        stats = json.loads(h.read())["stats"]
    assert stats["largest_batch"] == 1 and stats["mean_batch"] == 1.0


@needs_gguf
def test_a_failing_request_fails_alone(loaded):
    from seektune.serve.batcher import GenRequest

    events: dict[int, list] = {0: [], 1: []}
    bad = GenRequest([loaded.engine.n_vocab + 5], max_tokens=3)
    good = GenRequest(chat_ids(loaded, HELLO), max_tokens=3)
    for i, r in enumerate((bad, good)):
        r.emit = lambda kind, value, i=i: events[i].append((kind, value))
    counts = loaded.engine.run([bad, good])
    assert [k for k, _ in events[0]] == ["error"] and "vocabulary" in events[0][0][1]
    assert events[1][-1] == ("done", {"finish_reason": "length", "prompt_tokens": len(good.prompt_ids),
                                      "completion_tokens": 3})
    assert counts["requests"] == 2 and counts["steps"] == 3


@needs_gguf
def test_api_key_is_required(server):
    import httpx

    body = {"model": NAME, "messages": HELLO, "max_tokens": 2}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)  # no Authorization header
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").chat.completions.create(model=NAME, messages=HELLO, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    assert [m.id for m in client(server).models.list().data] == [NAME]


@needs_gguf
def test_a_gguf_alone_uses_its_own_tokenizer_and_chat_template(gguf, loaded, tmp_path):
    alone = tmp_path / gguf.name
    shutil.copy(gguf, alone)  # no hf/ beside it
    other = load_for_serving(str(alone), threads=1, context_length=64)
    try:
        assert "the GGUF's own tokenizer" in other.describe and other.template == "auto"
        assert other.context_length == 64 and other.name == gguf.stem
        assert chat_ids(other, HELLO) == chat_ids(loaded, HELLO)
        assert other.engine.eos_ids == loaded.engine.eos_ids
    finally:
        other.engine.llm.close()


def test_missing_llama_cpp_is_a_cli_error_naming_make_llama_cpp(tmp_path, monkeypatch):
    """No llama.cpp needed: the import fails as it does where `make llama-cpp` was never run."""
    from typer.testing import CliRunner

    from seektune.cli import app

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    assert "make llama-cpp" in llamacpp.missing()
    fake = tmp_path / "med.q4_k_m.gguf"
    fake.write_bytes(b"GGUF")
    res = CliRunner().invoke(app, ["serve", str(fake), "--port", "1"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "make llama-cpp" in out and "serving a GGUF runs llama.cpp" in out, out
