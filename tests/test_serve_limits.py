"""The hardened server (issue 23, item 3): limits with 4xx naming the field, a bounded queue, slots freed
by clients that leave, a body size limit, constant-time key checks, loopback by default.

One tiny-qwen2 server (one decode row at a time, a queue of one) so that "busy", "queued" and "full"
can be produced on purpose; requests go over real sockets (a disconnect is a closed socket).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.serve.server import ServeOptions, ThreadedServer, build_app, load_for_serving

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server():
    app, batcher = build_app(load_for_serving("tiny-qwen2"), ServeOptions(
        api_key=KEY, model_name="tiny", max_tokens=400, max_prompt_tokens=24, max_body_bytes=4096,
        context_length=512, max_batch=1, queue_size=1, window_ms=0))
    s = ThreadedServer(app).start()
    s.batcher = batcher
    yield s
    s.stop()


def post(s, path, body, key=KEY, chunked=False):
    c = http.client.HTTPConnection(s.host, s.port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if chunked:
        c.request("POST", path, body=iter([data[i:i + 1000] for i in range(0, len(data), 1000)]), headers=headers,
                  encode_chunked=True)
    else:
        c.request("POST", path, body=data, headers=headers)
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"{}"), {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return out


def chat(n_tokens=2, text="Hi", **kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": n_tokens,
            "temperature": 0, **kw}


def stats(s):
    return s.batcher.stats.as_dict()


def test_limits_answer_400_naming_the_field(server):
    long = " ".join(f"word{i}" for i in range(60))
    cases = [(chat(text=long), "messages", "prompt_too_long"),
             ({"model": "tiny", "prompt": long, "max_tokens": 2}, "prompt", "prompt_too_long"),
             (chat(n_tokens=401), "max_tokens", "too_many_tokens"),
             ({**chat(), "max_tokens": None, "max_completion_tokens": 999}, "max_completion_tokens", "too_many_tokens"),
             (chat(n=3), "n", "too_many_choices"),
             (chat(temperature=9), "temperature", None)]
    for body, field, code in cases:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        status, out, _ = post(server, path, body)
        assert status == 400 and out["error"]["param"] == field, (field, out)
        assert code is None or out["error"]["code"] == code, (field, out)
        assert field in out["error"]["message"] or field == "temperature", out


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_413_before_it_is_parsed(server, chunked):
    status, out, headers = post(server, "/v1/chat/completions", b'{"pad": "' + b"x" * 10_000 + b'"}', chunked=chunked)
    assert status == 413 and out["error"]["code"] == "request_too_large" and "4096 bytes" in out["error"]["message"]
    assert post(server, "/v1/chat/completions", chat())[0] == 200  # the server is fine afterwards


def _open_stream(s, body) -> socket.socket:
    """Send a streaming request on a raw socket and read until the first content chunk."""
    sock = socket.create_connection((s.host, s.port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while got.count(b"data: ") < 2:  # the role chunk, then a first token
        got += sock.recv(65536)
    return sock


def _wait(cond, timeout=30.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_full_queue_is_503_and_a_client_that_leaves_frees_its_slot(server):
    """One row decodes at a time and one request may wait: a third is 503 with Retry-After. The first
    client hangs up mid-stream, its row leaves at once, and the waiting request runs."""
    before = stats(server)
    streaming = _open_stream(server, chat(n_tokens=400, text="Tell me a long story", stream=True))
    waiting = {}
    t = threading.Thread(target=lambda: waiting.update(r=post(server, "/v1/chat/completions", chat())))
    t.start()
    _wait(lambda: server.batcher.depth == 1)
    status, out, headers = post(server, "/v1/chat/completions", chat())
    assert status == 503 and out["error"]["code"] == "queue_full" and headers.get("retry-after") == "1"
    streaming.close()  # the client goes away mid-stream
    t.join(timeout=60)
    assert waiting["r"][0] == 200
    after = stats(server)
    assert after["cancelled"] - before["cancelled"] == 1 and after["rejected_full"] - before["rejected_full"] == 1
    # the abandoned stream stopped early: far fewer decode steps than its 400 tokens
    assert after["steps"] - before["steps"] < 300


def test_a_non_streaming_client_that_leaves_frees_its_slot(server):
    before = stats(server)
    sock = socket.create_connection((server.host, server.port), timeout=30)
    data = json.dumps(chat(n_tokens=400, text="Tell me a long story")).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    _wait(lambda: stats(server)["steps"] - before["steps"] > 3)  # it is decoding
    sock.close()
    _wait(lambda: stats(server)["cancelled"] - before["cancelled"] == 1)
    assert stats(server)["steps"] - before["steps"] < 300
    assert post(server, "/v1/chat/completions", chat())[0] == 200


def test_api_key_is_compared_in_constant_time(server, monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    for wrong in ("s", "s3cret-kex", "s3cret-key-and-more" * 10):  # short, same length, long
        status, out, _ = post(server, "/v1/chat/completions", chat(), key=wrong)
        assert status == 401 and out["error"]["message"] == "invalid API key"
    assert post(server, "/v1/chat/completions", chat())[0] == 200
    assert calls and all(a == b == 32 for a, b in calls)  # sha256 digests: equal length whatever the key


def test_binds_loopback_by_default_and_warns_when_open_without_a_key(monkeypatch):
    from typer.testing import CliRunner

    from seektune.cli import app
    from seektune.config import DeployConfig
    from seektune.serve import server as server_mod
    from seektune.utils import console

    assert DeployConfig().host == "127.0.0.1" and server_mod.ThreadedServer.__init__.__defaults__[0] == "127.0.0.1"
    runs, warnings = [], []
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: runs.append(host))
    monkeypatch.setattr(server_mod, "build_app", lambda target, opts: (None, None))
    monkeypatch.setattr(console, "warn", warnings.append)
    monkeypatch.delenv(server_mod.API_KEY_ENV, raising=False)
    server_mod.run_server("tiny-qwen2", "127.0.0.1", 8000, ServeOptions())
    server_mod.run_server("tiny-qwen2", "0.0.0.0", 8000, ServeOptions())
    server_mod.run_server("tiny-qwen2", "0.0.0.0", 8000, ServeOptions(api_key="k"))
    assert runs == ["127.0.0.1", "0.0.0.0", "0.0.0.0"] and len(warnings) == 1 and "without an API key" in warnings[0]
    r = CliRunner().invoke(app, ["serve", "tiny-qwen2", "--max-prompt-tokens", "0"])
    assert r.exit_code == 2 and "max_prompt_tokens" in r.output  # the limits are CLI options, checked
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "--max-prompt-tokens" in help_text and "--max-body-bytes" in help_text
