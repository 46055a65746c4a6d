"""The server speaks OpenAI's API (checked with the `openai` client), rejects bad requests, and batches."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.serve.server import ServeOptions, ThreadedServer, build_app, load_for_serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "test-key"


@pytest.fixture(scope="module")
def loaded():
    return load_for_serving("tiny-qwen2")


@pytest.fixture(scope="module")
def server(loaded):
    app, batcher = build_app(loaded, ServeOptions(api_key=KEY, model_name="tiny", max_tokens=16,
                                                  context_length=96, max_batch=16, window_ms=20))
    s = ThreadedServer(app).start()
    yield s
    s.stop()


def client(s, key=KEY):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, timeout=60)


def raw(s, path, body: bytes | None = None, key=KEY):
    req = urllib.request.Request(s.url + path, data=body, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(s):
    return raw(s, "/health", key=None)[1]


def test_openai_client_shapes(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    msgs = [{"role": "user", "content": "Say hello."}]
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content  # greedy: streamed and whole answers agree
    # tiny-qwen2 carries the DeepSeek-R1 tokenizer: `auto` serves the R1 template, whose prompt opens <think>,
    # so a reply that never closes it is all reasoning (as DeepSeek's API reports it)
    thought = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or "" for ch in chunks if ch.choices)
    whole = getattr(r.choices[0].message, "reasoning_content", None)
    assert whole is not None and thought == whole and r.usage.completion_tokens > 0
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    comp = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0.8, seed=3)
    assert comp.object == "text_completion" and comp.usage.completion_tokens <= 5
    again = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0.8, seed=3)
    assert again.choices[0].text == comp.choices[0].text  # seeded sampling is reproducible
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True))
    assert isinstance(streamed, str)


def test_bad_requests_get_clear_4xx(server):
    c = client(server)
    code, body = raw(server, "/v1/chat/completions", b"{not json")
    assert code == 400 and "not valid JSON" in body["error"]["message"]
    code, body = raw(server, "/v1/chat/completions", json.dumps({"model": "tiny", "messages": []}).encode())
    assert code == 400 and body["error"]["param"] == "messages"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="above this server's limit"):
        c.completions.create(model="tiny", prompt="hi", max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        c.completions.create(model="tiny", prompt="word " * 200, max_tokens=8)
    code, body = raw(server, "/v1/models", key=None)
    assert code == 401 and "missing API key" in body["error"]["message"]
    code, body = raw(server, "/v1/completions", json.dumps({"model": "tiny", "prompt": "hi"}).encode(), key=None)
    assert code == 401
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client(server, key="wrong").models.list()
    assert health(server)["status"] == "ok"  # health needs no key


def test_64_concurrent_requests_all_answered_in_batches(server):
    c = client(server)
    before = health(server)["stats"]

    def ask(i):
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Count to {i}."}],
                                      max_tokens=4, temperature=0)
        return i, r.choices[0].message.content, r.usage.completion_tokens

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(ask, range(64)))
    assert sorted(i for i, _, _ in results) == list(range(64))
    assert all(1 <= n <= 4 or text == "" for _, text, n in results)
    after = health(server)["stats"]
    assert after["requests"] - before["requests"] == 64
    assert after["largest_batch"] > 1 and after["batches"] - before["batches"] < 64
    # batching does not change greedy answers: the same prompt alone gives the same text
    for i, text, _ in results[:3]:
        alone = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Count to {i}."}],
                                          max_tokens=4, temperature=0)
        assert alone.choices[0].message.content == text


def test_full_queue_answers_503(loaded):
    app, _ = build_app(loaded, ServeOptions(model_name="tiny", api_key="", max_batch=1, queue_size=1, window_ms=0,
                                                  max_tokens=32))
    s = ThreadedServer(app).start()
    try:
        c = client(s, key="none")

        def ask(i):
            try:
                c.completions.create(model="tiny", prompt=f"Tell me about {i}", max_tokens=32, temperature=0)
                return 200
            except openai.APIStatusError as e:
                assert "queue is full" in e.message
                return e.status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(ask, range(12)))
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        assert health(s)["stats"]["rejected_full"] == codes.count(503)
    finally:
        s.stop()


def test_requests_joining_a_running_batch_decode_as_if_alone(loaded):
    """Continuous batching: a row that joins mid-decode (shorter KV cache, left-padded) and rows that
    leave early give the same greedy tokens as each request decoded alone."""
    from seektune.serve.batcher import Engine, GenRequest

    class Req(GenRequest):
        def emit(self, kind, value):
            self.out = getattr(self, "out", "") + (value if kind == "delta" else "")

    tok = loaded.tok
    prompts = ["A much longer first prompt that fills the cache with many tokens before anyone joins", "Hi",
               "Second joiner"]
    engine = Engine(loaded.model, tok)

    def make(i, n):
        return Req(tok(prompts[i], add_special_tokens=False)["input_ids"], n)

    alone = []
    for i, n in enumerate((8, 5, 3)):
        r = make(i, n)
        engine.run([r])
        alone.append(r.out)
    reqs = [make(0, 8), make(1, 5), make(2, 3)]
    calls = []

    def take_more(n):
        calls.append(n)
        return {2: [reqs[1]], 3: [reqs[2]]}.get(len(calls), [])

    stats = engine.run([reqs[0]], take_more, max_batch=4)
    assert [r.out for r in reqs] == alone
    assert stats["largest"] == 3 and stats["requests"] == 3


def test_reasoning_is_split_from_the_answer_as_it_streams():
    from seektune.data.reasoning import ReasoningStream, split_generation

    full = "Water helps.\n</think>\n\nDrink two litres."
    assert split_generation(full, True) == ("Water helps.", "Drink two litres.")
    assert split_generation("<think>\nr\n</think>\n\na", False) == ("r", "a")
    assert split_generation("just an answer", False) == (None, "just an answer")
    assert split_generation("cut off while thinking", True) == ("cut off while thinking", "")
    for cut in range(1, len(full)):  # every split point, the tag cut in two included
        st = ReasoningStream(prompt_opened_think=True)
        parts = st.feed(full[:cut]) + st.feed(full[cut:]) + st.flush()
        reasoning = "".join(t for k, t in parts if k == "reasoning")
        content = "".join(t for k, t in parts if k == "content")
        assert (reasoning, content) == split_generation(full, True) == ("Water helps.", "Drink two litres."), cut
    st = ReasoningStream(prompt_opened_think=False)  # the reply opens <think> itself
    parts = st.feed("<thi") + st.feed("nk>\nhmm</think>ok") + st.flush()
    assert [k for k, _ in parts] == ["reasoning", "content"] and parts == [("reasoning", "hmm"), ("content", "ok")]
    text = "\n\nstep one\n\nstep two\n\n"  # newlines inside the reasoning stay, around it they go
    for cut in range(1, len(text)):
        st = ReasoningStream(True)
        parts = st.feed(text[:cut]) + st.feed(text[cut:]) + st.flush()
        assert "".join(t for _, t in parts) == split_generation(text, True)[0] == "step one\n\nstep two"


def test_a_template_without_reasoning_serves_plain_content(loaded):
    app, _ = build_app(loaded, ServeOptions(api_key=KEY, model_name="tiny", max_tokens=8, context_length=96,
                                            template="deepseek-v3"))
    s = ThreadedServer(app).start()
    try:
        r = client(s).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                              temperature=0)
        assert getattr(r.choices[0].message, "reasoning_content", None) is None and r.choices[0].message.content
    finally:
        s.stop()
