"""Load test of `seektune serve` (issue 23, item 3): concurrent streaming clients plus a stream of
malformed, oversized and abandoned requests, for a bounded time, against the real HTTP server.

Valid clients loop on streaming chat requests (greedy, fixed max_tokens) and must all get 200 and a
full stream ending in [DONE]. Bad clients loop over: invalid JSON, a body over the size limit, a
prompt over the prompt limit, max_tokens over the cap, n > 1, a wrong key, no key, an unknown model,
and a valid stream abandoned after its first token (which may instead be refused 503 when the queue
is full: shedding load is the designed answer). Prints requests served, errors by kind, latency
p50/p95 of valid requests, peak RSS of the process (server and clients share it), the load average
before and after, and whether any valid request failed (exit code 1 if one did). Usage:

    PYTHONPATH=src python bench/serve_load.py --clients 64 --seconds 120            # the issue's figure
    PYTHONPATH=src python bench/serve_load.py --clients 4 --seconds 5 --bad-clients 2  # a smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

KEY = "load-test-key"
QUESTIONS = ["What helps with a sore throat?", "How much water should an adult drink a day?",
             "What is a normal resting heart rate?", "Why do we get fevers?", "感冒了怎么办？",
             "高血压患者饮食注意什么？", "Is coffee bad for sleep?", "How can I lower blood pressure?"]


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Load:
    def __init__(self, host, port, model, max_tokens, prompt_cap, body_cap, token_cap, deadline):
        self.host, self.port, self.model = host, port, model
        self.max_tokens, self.prompt_cap, self.body_cap, self.token_cap = max_tokens, prompt_cap, body_cap, token_cap
        self.deadline = deadline
        self.lock = threading.Lock()
        self.valid_ok, self.valid_failed, self.latency = 0, Counter(), []
        self.bad = Counter()        # (kind, status, code) -> count
        self.bad_unexpected = Counter()

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, body: bytes, key: str | None = KEY, stream_first_only=False, path="/v1/chat/completions"):
        """POST `path`; returns (status, error code or None, the raw body)."""
        sock = socket.create_connection((self.host, self.port), timeout=600)
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "")
                + "Connection: close\r\n\r\n").encode()
        try:
            sock.sendall(head + body)
        except OSError:  # the server closed early (413 before the whole body was sent)
            pass
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
            if stream_first_only:  # hang up mid-stream, after the first two chunks
                seen = 0
                while resp.status == 200 and seen < 2:
                    line = resp.fp.readline()
                    if not line:
                        break
                    seen += line.startswith(b"data: ")
                if resp.status == 200:
                    return resp.status, None, b""
            raw = resp.read()
        finally:
            resp.close()  # the response's file object holds the socket open otherwise
            sock.close()
        code = None
        if resp.status >= 400:
            try:
                code = json.loads(raw)["error"].get("code")
            except (ValueError, KeyError, TypeError):
                code = "unparsable"
        return resp.status, code, raw

    def chat(self, text, **kw) -> bytes:
        return json.dumps({"model": self.model, "messages": [{"role": "user", "content": text}],
                           "max_tokens": self.max_tokens, "temperature": 0, **kw}).encode()

    # -- valid clients ----------------------------------------------------------------------
    def valid_client(self, k: int):
        j = 0
        while time.time() < self.deadline:
            body = self.chat(QUESTIONS[(k + j) % len(QUESTIONS)], stream=True)
            j += 1
            t0 = time.perf_counter()
            try:
                status, code, raw = self._send(body)
                ok = status == 200 and raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw
                why = None if ok else f"{status} {code or 'stream without [DONE]'}"
            except OSError as e:
                ok, why = False, f"connection: {type(e).__name__}"
            with self.lock:
                if ok:
                    self.valid_ok += 1
                    self.latency.append(time.perf_counter() - t0)
                else:
                    self.valid_failed[why] += 1

    # -- bad clients: (kind, body, key, expected status, expected code) ---------------------
    def bad_cases(self):
        long_prompt = " ".join(f"word{i}" for i in range(self.prompt_cap + 50))
        return [
            ("invalid JSON", b"{not json", KEY, 400, None),
            ("body over the limit", b'{"pad": "' + b"x" * (self.body_cap + 1) + b'"}', KEY, 413, "request_too_large"),
            ("prompt over the limit", self.chat(long_prompt), KEY, 400, None),  # prompt_too_long or context
            ("max_tokens over the cap", self.chat("hi", max_tokens=self.token_cap + 1), KEY, 400, "too_many_tokens"),
            ("n > 1", self.chat("hi", n=4), KEY, 400, "too_many_choices"),
            ("wrong key", self.chat("hi"), "wrong-key", 401, "invalid_api_key"),
            ("no key", self.chat("hi"), None, 401, "invalid_api_key"),
            ("unknown model", self.chat("hi").replace(self.model.encode(), b"gpt-x", 1), KEY, 404, "model_not_found"),
            # a plain-text stream: every token is a chunk (a chat stream of a reasoning template may hold
            # back whitespace), so the client really hangs up while its row is decoding
            ("abandoned stream", json.dumps({"model": self.model, "prompt": "Once upon a time", "stream": True,
                                             "max_tokens": self.token_cap, "temperature": 0}).encode(), KEY, 200,
             "abandon"),
        ]

    def bad_client(self, k: int):
        cases = self.bad_cases()
        i = k
        while time.time() < self.deadline:
            kind, body, key, want_status, want_code = cases[i % len(cases)]
            i += 1
            try:
                abandon = want_code == "abandon"
                status, code, _ = self._send(body, key, stream_first_only=abandon,
                                             path="/v1/completions" if abandon else "/v1/chat/completions")
            except OSError as e:
                status, code = "conn", type(e).__name__
            expected = status == want_status and (want_code in (None, "abandon") or code == want_code)
            expected = expected or (want_code == "abandon" and code == "queue_full")  # shed under load: by design
            with self.lock:
                (self.bad if expected else self.bad_unexpected)[(kind, status, code)] += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-qwen2", help="run folder, model folder or preset")
    ap.add_argument("--clients", type=int, default=64, help="concurrent valid streaming clients")
    ap.add_argument("--bad-clients", type=int, default=8, help="concurrent clients sending bad requests")
    ap.add_argument("--seconds", type=float, default=120, help="how long the load runs")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each valid request")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--queue-size", type=int, default=None, help="default: clients + bad clients (no valid 503)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()

    import psutil

    from seektune.serve.server import ServeOptions, ThreadedServer, build_app, load_for_serving

    proc = psutil.Process()
    load_before = os.getloadavg()
    loaded = load_for_serving(a.model)
    prompt_cap, body_cap, token_cap = 256, 64 * 1024, max(128, 2 * a.max_tokens)
    app, batcher = build_app(loaded, ServeOptions(
        api_key=KEY, model_name="load", max_batch=a.max_batch, window_ms=10, max_tokens=token_cap,
        max_prompt_tokens=prompt_cap, max_body_bytes=body_cap, threads=a.threads,
        queue_size=a.queue_size or (a.clients + a.bad_clients)))
    server = ThreadedServer(app).start()
    rss_idle = proc.memory_info().rss
    peak = [rss_idle]
    load = Load(server.host, server.port, "load", a.max_tokens, prompt_cap, body_cap, token_cap,
                time.time() + a.seconds)

    def sample():
        while time.time() < load.deadline + 30:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.1)

    threads = [threading.Thread(target=sample, daemon=True)]
    threads += [threading.Thread(target=load.valid_client, args=(k,)) for k in range(a.clients)]
    threads += [threading.Thread(target=load.bad_client, args=(k,)) for k in range(a.bad_clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    wall = time.time() - t0
    stats = batcher.stats.as_dict()
    server.stop()
    load_after = os.getloadavg()

    out = {
        "model": a.model, "clients": a.clients, "bad_clients": a.bad_clients, "seconds": round(wall, 1),
        "max_tokens": a.max_tokens, "max_batch": a.max_batch,
        "valid_served": load.valid_ok, "valid_failed": dict(load.valid_failed),
        "latency_p50_s": pct(load.latency, 50), "latency_p95_s": pct(load.latency, 95),
        "bad_answered_as_expected": {f"{k} -> {s} {c or ''}".strip(): n for (k, s, c), n in sorted(load.bad.items())},
        "bad_unexpected": {f"{k} -> {s} {c or ''}".strip(): n for (k, s, c), n in sorted(load.bad_unexpected.items())},
        "server_stats": stats, "rss_idle_mb": round(rss_idle / 2**20), "rss_peak_mb": round(peak[0] / 2**20),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    out["no_valid_request_failed"] = not load.valid_failed
    print(f"valid requests served: {load.valid_ok} in {wall:.1f}s ({a.clients} streaming clients, "
          f"max_tokens {a.max_tokens}); failed: {sum(load.valid_failed.values())} {dict(load.valid_failed) or ''}")
    if load.latency:
        print(f"latency of valid requests: p50 {out['latency_p50_s']:.2f}s  p95 {out['latency_p95_s']:.2f}s")
    print(f"bad requests: {sum(load.bad.values())} answered as expected, {sum(load.bad_unexpected.values())} not")
    for k, n in {**out["bad_answered_as_expected"], **{"UNEXPECTED " + k: n for k, n in
                                                       out["bad_unexpected"].items()}}.items():
        print(f"  {n:6d}  {k}")
    print(f"server: {stats}")
    print(f"peak RSS {out['rss_peak_mb']} MB (idle after load {out['rss_idle_mb']} MB); load average "
          f"{out['loadavg_before']} before, {out['loadavg_after']} after, {out['cpus']} CPUs")
    print("no valid request failed" if out["no_valid_request_failed"] else "SOME VALID REQUESTS FAILED")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
    sys.exit(0 if out["no_valid_request_failed"] and not load.bad_unexpected else 1)


if __name__ == "__main__":
    main()
