"""llama.cpp decoding several requests together (serve/llamacpp_engine.py, `parallel` > 1).

The same tiny Llama GGUF as tests/test_serve_gguf.py. Each request decoded beside others must give
what it gives alone (greedy and seeded), the rows must really share decode steps, KV room must be
reserved so that requests that do not fit wait instead of failing, and one bad request fails alone.
"""

from __future__ import annotations

import pytest
import torch

from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.serve.batcher import GenRequest
from test_export_gguf import tiny_llama_run  # noqa: F401  (fixture)
from test_serve_gguf import HELLO, chat_ids, gguf, loaded, needs_gguf  # noqa: F401  (fixtures)

QUESTIONS = [[{"role": "user", "content": f"Question {i}: what helps a headache?"}] for i in range(5)]


@pytest.fixture(scope="module")
def together(loaded):  # noqa: F811
    """An engine on the same Llama that decodes up to 4 sequences at once."""
    from seektune.serve.llamacpp_engine import LlamaCppEngine

    base = loaded.engine
    return LlamaCppEngine(base.llm, base.tok, base.eos_ids - {base.llm.token_eos(), base.tok.eos_token_id},
                          parallel=4, threads=1)


def _run(engine, reqs, take_more=None):
    events = {id(r): [] for r in reqs}
    for r in reqs:
        r.emit = lambda kind, value, r=r: events[id(r)].append((kind, value))
    counts = engine.run(list(reqs), take_more=take_more)
    return counts, events


def _text(evs) -> str:
    return "".join(v for k, v in evs if k == "delta")


def _done(evs) -> dict:
    assert evs and evs[-1][0] == "done", evs
    return evs[-1][1]


@needs_gguf
def test_requests_decoded_together_answer_what_each_answers_alone(loaded, together):  # noqa: F811
    def reqs(**kw):
        return [GenRequest(chat_ids(loaded, q), max_tokens=4 + i, **kw) for i, q in enumerate(QUESTIONS)]

    alone = [_run(loaded.engine, [r])[1][id(r)] for r in reqs(temperature=0)]
    batch = reqs(temperature=0)
    counts, events = _run(together, batch)
    assert [_text(events[id(r)]) for r in batch] == [_text(e) for e in alone]
    assert [_done(events[id(r)])["completion_tokens"] for r in batch] == [4, 5, 6, 7, 8]
    assert len({_text(e) for e in alone}) > 1  # the prompts differ in their answers, or equality proves little
    # 5 requests on 4 sequences: the 5th joins when the first leaves; rows share steps (8 tokens at most each)
    assert counts["largest"] == 4 and counts["requests"] == 5 and counts["steps"] < sum(4 + i for i in range(5))
    assert counts["row_steps"] == sum(4 + i for i in range(5))
    # seeded sampling: the same seed gives the same tokens beside other rows as alone
    seeded = [GenRequest(chat_ids(loaded, q), max_tokens=6, temperature=1.0, seed=7 + i) for i, q in enumerate(QUESTIONS)]
    _, ev = _run(together, seeded)
    again = [GenRequest(chat_ids(loaded, q), max_tokens=6, temperature=1.0, seed=7 + i) for i, q in enumerate(QUESTIONS)]
    solo = [_text(_run(together, [r])[1][id(r)]) for r in again]
    assert [_text(ev[id(r)]) for r in seeded] == solo
    greedy = [_text(e) for e in alone]
    assert solo != [g for g in greedy]  # sampling left the greedy path somewhere


@needs_gguf
def test_a_request_that_does_not_fit_beside_the_others_waits_for_room(loaded, together):  # noqa: F811
    n_ctx = together._slots.n_ctx
    ids = chat_ids(loaded, HELLO)
    big = n_ctx - len(ids) - 10  # two such rows cannot share the cache
    first = GenRequest(ids, max_tokens=big, temperature=0)
    second = GenRequest(ids, max_tokens=big, temperature=0)
    short = _text(_run(loaded.engine, [r := GenRequest(ids, max_tokens=3, temperature=0)])[1][id(r)])
    first.stop = second.stop = [short[-2:]] if len(short) >= 2 else []
    assert first.stop, "precondition: a stop string from the first tokens"
    counts, events = _run(together, [first, second])
    assert _done(events[id(first)])["finish_reason"] == "stop" and _done(events[id(second)])["finish_reason"] == "stop"
    assert counts["largest"] == 1  # the second was admitted only after the first left
    small = [GenRequest(ids, max_tokens=3, temperature=0) for _ in range(3)]
    assert _run(together, small)[0]["largest"] == 3  # small ones fit together
    assert not together._slots.busy and len(together._slots.free) == 4  # every sequence is back


@needs_gguf
def test_a_failing_request_fails_alone_beside_running_ones(loaded, together):  # noqa: F811
    good = [GenRequest(chat_ids(loaded, q), max_tokens=3) for q in QUESTIONS[:2]]
    bad = GenRequest([together.n_vocab + 5], max_tokens=3)
    cancelled = GenRequest(chat_ids(loaded, HELLO), max_tokens=3)
    cancelled.cancelled = True
    counts, events = _run(together, [good[0], bad, cancelled, good[1]])
    assert [k for k, _ in events[id(bad)]] == ["error"] and "vocabulary" in events[id(bad)][0][1]
    assert _done(events[id(cancelled)])["finish_reason"] == "cancelled" and counts["cancelled"] == 1
    assert all(_done(events[id(g)]) == {"finish_reason": "length", "prompt_tokens": len(g.prompt_ids),
                                        "completion_tokens": 3} for g in good)
    assert not together._slots.busy


@needs_gguf
def test_requests_queued_meanwhile_join_the_running_batch(loaded, together):  # noqa: F811
    first = GenRequest(chat_ids(loaded, QUESTIONS[0]), max_tokens=8, temperature=0)
    later = [GenRequest(chat_ids(loaded, q), max_tokens=4, temperature=0) for q in QUESTIONS[1:3]]
    events = {id(r): [] for r in [first, *later]}
    for r in [first, *later]:
        r.emit = lambda kind, value, r=r: events[id(r)].append((kind, value))
    queue = list(later)

    def take_more(n):
        got, queue[:] = queue[:n], queue[n:]
        return got

    counts = together.run([first], take_more=take_more)
    assert counts["requests"] == 3 and counts["largest"] == 3 and not queue
    assert _done(events[id(first)])["completion_tokens"] == 8
    assert all(_done(events[id(r)])["completion_tokens"] == 4 for r in later)
    assert counts["steps"] < 8 + 4 + 4  # the joiners decoded beside the first


@needs_gguf
def test_ui_chat_page_streams_a_gguf_reply_from_llama_cpp(loaded):  # noqa: F811
    """The UI's Chat page runs a GGUF through the serving engine: the same text as the server's greedy answer."""
    from seektune.data.templates import get_template
    from seektune.ui.chat import ChatSettings, stream_reply

    want = _text(_run(loaded.engine, [r := GenRequest(chat_ids(loaded, HELLO), max_tokens=6, temperature=0)])[1][id(r)])
    steps = list(stream_reply(loaded, HELLO[0]["content"], ChatSettings(max_new_tokens=6)))
    assert len(steps) >= 2 and steps[-1] == ("", want) and want
    assert get_template(loaded.template, loaded.tok).name  # the template the export checked the GGUF with
