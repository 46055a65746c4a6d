"""Serving throughput with dynamic batching on vs off, in one run, against the real HTTP server.

N concurrent clients each send R chat requests (greedy, fixed max_tokens) through the `openai`
client. The same loaded model serves both modes: batching on (max_batch = N, window 10 ms) and
off (max_batch = 1). Prints completion tokens/s, requests/s and latency p50/p95 for each mode and
the on/off ratio. Usage:

    PYTHONPATH=src python bench/serve_bench.py --model smollm2-135m-instruct --clients 16 --requests 2
    PYTHONPATH=src python bench/serve_bench.py --model OUT/NAME.f16.gguf --clients 8 --threads 2   # llama.cpp

A .gguf is served by llama.cpp with as many parallel sequences as there are clients ("batching on"),
and one at a time through the same engine ("batching off").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

QUESTIONS = ["What helps with a sore throat?", "How much water should an adult drink a day?",
             "What is a normal resting heart rate?", "Why do we get fevers?", "How do vaccines work?",
             "What causes seasonal allergies?", "Is coffee bad for sleep?", "How can I lower blood pressure?"]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run_mode(loaded, label, max_batch, clients, requests, max_tokens, window_ms):
    import openai

    from seektune.serve.server import ServeOptions, ThreadedServer, build_app

    app, batcher = build_app(loaded, ServeOptions(api_key="", model_name="bench", max_batch=max_batch,
                                                  window_ms=window_ms, max_tokens=max_tokens, queue_size=1024))
    server = ThreadedServer(app).start()
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)
    c.chat.completions.create(model="bench", messages=[{"role": "user", "content": "warm up"}], max_tokens=2)

    def client(k):
        out = []
        for j in range(requests):
            q = QUESTIONS[(k + j) % len(QUESTIONS)]
            t0 = time.perf_counter()
            r = c.chat.completions.create(model="bench", messages=[{"role": "user", "content": q}],
                                          max_tokens=max_tokens, temperature=0)
            out.append((time.perf_counter() - t0, r.usage.completion_tokens))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for xs in pool.map(client, range(clients)) for x in xs]
    wall = time.perf_counter() - t0
    stats = batcher.stats.as_dict()
    server.stop()
    lat = [r[0] for r in results]
    toks = sum(r[1] for r in results)
    return {"mode": label, "requests": len(results), "tokens": toks, "wall_s": round(wall, 1),
            "tok_s": round(toks / wall, 1), "req_s": round(len(results) / wall, 2),
            "p50_s": round(statistics.median(lat), 2), "p95_s": round(pct(lat, 95), 2),
            "mean_batch": stats["mean_batch"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--window-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import torch

    from seektune.serve.server import load_for_serving

    if a.threads:
        torch.set_num_threads(a.threads)
    loaded = load_for_serving(a.model, threads=a.threads, parallel=a.clients)  # parallel: llama.cpp sequences
    print(f"model {a.model}; {a.clients} clients x {a.requests} requests, max_tokens {a.max_tokens}, greedy; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = [run_mode(loaded, "batching on", a.clients, a.clients, a.requests, a.max_tokens, a.window_ms),
            run_mode(loaded, "batching off", 1, a.clients, a.requests, a.max_tokens, a.window_ms)]
    cols = ["mode", "requests", "tokens", "wall_s", "tok_s", "req_s", "p50_s", "p95_s", "mean_batch"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in cols) + " |")
    print(f"throughput ratio on/off: {rows[0]['tok_s'] / rows[1]['tok_s']:.2f}x; "
          f"p50 latency ratio off/on: {rows[1]['p50_s'] / rows[0]['p50_s']:.2f}x")


if __name__ == "__main__":
    main()
