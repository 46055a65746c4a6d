"""Benchmarks (issue 17): the harness's scoring checked by hand on a tiny model, GSM8K answer extraction
on real answer strings, the question sample, the intervals, the spec errors, and `eval.benchmarks`
before/after a training run into benchmarks.json and the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import shared_data, tiny_config, train
from seektune.data.io import DataError
from seektune.eval.benchmarks import BenchSettings, parse, parse_all
from seektune.eval.benchmarks.harness import allocate, harness_model, run_benchmarks
from seektune.eval.intervals import mean_interval, paired_difference, verdict, wilson

MCQ = [
    {"question": "What is 2+2?", "A": "3", "B": "4", "C": "5", "answer": "B"},
    {"question": "Capital of France?", "A": "Paris", "B": "Rome", "C": "Berlin", "answer": "A"},
    {"question": "高血压患者应少吃什么？", "A": "盐", "B": "蔬菜", "C": "水果", "answer": "A"},
    {"question": "Colour of a clear sky?", "options": ["blue", "green", "red", "black"], "answer": "blue"},
]


@pytest.fixture
def mcq_file(tmp_path):
    p = tmp_path / "exam.jsonl"
    rows = MCQ + [{"question": "no answer here", "A": "x", "B": "y"}]  # rejected, with the reason
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def tiny():
    from seektune.config import load_config
    from seektune.models.loader import load_model

    cfg = load_config(None, ["model.name_or_path=tiny-qwen2"])
    torch.manual_seed(0)
    model, tok, _ = load_model(cfg.model, log=lambda *_: None)
    return model.eval(), tok


def _ev(tmp_path):
    from seektune.config import EvalConfig

    return EvalConfig(cmmlu_dir=str(tmp_path / "no-cmmlu"), gsm8k_file=str(tmp_path / "no-gsm8k.jsonl"))


def _hand_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """sum log p(continuation | context), split the way the harness splits a (context, continuation) pair."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


@pytest.mark.parametrize("score", ["letters", "text"])
def test_choice_scoring_matches_a_hand_computed_loglikelihood(tmp_path, mcq_file, tiny, score):
    model, tok = tiny
    spec = f"mcq:{mcq_file}" + (":score=text" if score == "text" else "")
    b = parse(spec, cmmlu_dir="", gsm8k_file="", work_dir=tmp_path / "w")
    assert b.tasks[0].size == 4 and b.rejected == 1
    rejects = (tmp_path / "w" / "rejects_mcq_exam_test.jsonl").read_text(encoding="utf-8")
    assert "exam.jsonl:5" in rejects and "no answer field" in rejects
    results, rows = run_benchmarks(harness_model(model, tok, BenchSettings(batch_size=2)), [b], BenchSettings(),
                                   progress=False)
    assert len(rows) == 4 and results[b.name]["n"] == 4
    norm_hits = 0
    for r, src in zip(sorted(rows, key=lambda r: r["where"]), MCQ):
        q = src["question"]
        opts = src.get("options") or [src[x] for x in "ABC"]
        letters = "ABCD"[: len(opts)]
        ask = "答案：" if "高血压" in q else "Answer:"
        listing = "".join(f"{x}. {o}\n" for x, o in zip(letters, opts))
        ctx = f"{q}\n{ask}" if score == "text" else f"{q}\n{listing}{ask}"
        conts = [" " + o for o in opts] if score == "text" else [" " + x for x in letters]
        hand = [_hand_loglikelihood(model, tok, ctx, c) for c in conts]
        assert r["loglikelihoods"] == pytest.approx(hand, abs=2e-3), r["where"]
        gold = letters.index(src["answer"]) if src["answer"] in letters else opts.index(src["answer"])
        assert r["target"] == gold
        assert r["acc"] == float(max(range(len(hand)), key=hand.__getitem__) == gold)
        # acc_norm: log-likelihood per byte of the continuation (the harness's length normalisation)
        normed = [h / len(c.encode("utf-8")) for h, c in zip(hand, conts)]
        norm_hits += r["acc_norm"]
        assert r["acc_norm"] == float(max(range(len(normed)), key=normed.__getitem__) == gold)
    acc = results[b.name]["metrics"]["acc"]
    assert acc["n"] == 4 and acc["low"] <= acc["value"] <= acc["high"]
    assert results[b.name]["metrics"]["acc_norm"]["value"] == norm_hits / 4


class _ScriptedLM:
    """A harness LM that answers each GSM8K question with a scripted reply (no model)."""

    def __init__(self, reply_for):
        from lm_eval.api.model import LM

        class Impl(LM):
            def loglikelihood(self, requests):
                raise AssertionError("GSM8K is generated")

            def loglikelihood_rolling(self, requests):
                raise AssertionError("GSM8K is generated")

            def generate_until(self, requests):
                return [reply_for(r.doc) for r in requests]

        self.lm = Impl()


GSM = [
    ("Janet has 3 apples and buys 15 more. How many?", "3 + 15 = <<3+15=18>>18\n#### 18"),
    ("A shop sells 1,200 pens a day for 5 days. How many pens?", "1200*5=<<1200*5=6000>>6000\n#### 6,000"),
    ("Tom pays $4.50 twice. How much in dollars?", "4.5*2=<<4.5*2=9>>9\n#### 9"),
    ("What is 7 minus 10?", "7-10=<<7-10=-3>>-3\n#### -3"),
]


def test_gsm8k_strict_and_flexible_extraction_on_real_answer_strings(tmp_path):
    test = tmp_path / "gsm8k_test.jsonl"
    test.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM), encoding="utf-8")
    (tmp_path / "gsm8k_train.jsonl").write_text(test.read_text(encoding="utf-8"), encoding="utf-8")
    b = parse("gsm8k", cmmlu_dir="", gsm8k_file=str(test), work_dir=tmp_path / "w")
    # replies: the reference itself (strict and flexible right), the number said without '####'
    # (only flexible), a wrong number after '####', and '$1,000.00'-style formatting of the right one
    replies = {GSM[0][0]: GSM[0][1], GSM[1][0]: "So the shop sells 6,000 pens.",
               GSM[2][0]: "4.5 * 2 = 9\n#### 10", GSM[3][0]: "7 - 10 = -3\nThe answer is -3."}
    lm = _ScriptedLM(lambda doc: replies[doc["question"]]).lm
    results, rows = run_benchmarks(lm, [b], BenchSettings(shots=0), progress=False)
    by_q = {r["where"].rsplit("row ", 1)[1]: r for r in rows}
    strict = [by_q[str(i + 1)]["exact_match,strict-match"] for i in range(4)]
    flexible = [by_q[str(i + 1)]["exact_match,flexible-extract"] for i in range(4)]
    assert strict == [1.0, 0.0, 0.0, 0.0]
    assert flexible == [1.0, 1.0, 0.0, 1.0]
    assert by_q["2"]["preds"]["flexible-extract"] == "6,000" and by_q["1"]["response"] == GSM[0][1]
    m = results["gsm8k"]["metrics"]
    assert m["exact_match,strict-match"]["value"] == 0.25 and m["exact_match,flexible-extract"]["value"] == 0.75


def test_gsm8k_answers_of_the_real_test_file_extract_to_their_reference():
    from seektune.eval.answers import gsm8k_strict, reference_number

    rows = [json.loads(x) for x in shared_data("reasoning/gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()[:200]]
    assert all(gsm8k_strict(r["answer"]) == reference_number(r["answer"]) for r in rows)


def test_allocate_is_stratified_seeded_and_exact():
    sizes = {"a": 100, "b": 50, "c": 3}
    picks = allocate(sizes, 30, seed=0)
    assert sum(len(v) for v in picks.values()) == 30
    assert len(picks["a"]) > len(picks["b"]) >= len(picks["c"]) >= 1
    assert picks == allocate(sizes, 30, seed=0) and picks != allocate(sizes, 30, seed=1)
    assert all(len(set(v)) == len(v) and max(v) < sizes[k] for k, v in picks.items())
    assert allocate(sizes, 1000, seed=0) is None  # all questions


def test_intervals_and_verdicts():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    m = mean_interval([1, 0, 1, 1])
    assert m["value"] == 0.75 and m["n"] == 4 and m["low"] < 0.75 < m["high"]
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert same["delta"] == 0 and verdict(same["low"], same["high"]) == "within noise"
    up = paired_difference([0] * 60, [1] * 40 + [0] * 20)
    assert up["low"] > 0 and verdict(up["low"], up["high"]) == "gain"
    assert verdict(-0.2, -0.01) == "loss" and verdict(-0.2, 0.01) == "within noise"
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1])


def test_spec_errors_name_the_problem(tmp_path):
    ev = _ev(tmp_path)
    with pytest.raises(DataError, match="unknown benchmark 'cmlu'.*did you mean cmmlu"):
        parse_all(["cmlu:anatomy"], ev, tmp_path)
    with pytest.raises(DataError, match="no CMMLU test folder"):
        parse_all(["cmmlu"], ev, tmp_path)
    with pytest.raises(DataError, match="GSM8K file not found"):
        parse_all(["gsm8k"], ev, tmp_path)
    with pytest.raises(DataError, match="file not found"):
        parse_all(["mcq:nope.csv"], ev, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("question,A,B,answer\nq,x,y,Z\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable question"):
        parse_all([f"mcq:{bad}"], ev, tmp_path)
    with pytest.raises(DataError, match="unknown option 'devv=x'"):
        parse_all([f"mcq:{bad}:devv=x"], ev, tmp_path)


def test_cmmlu_subjects_from_the_release_folder(tmp_path, tiny):
    root = shared_data("general/cmmlu")
    from seektune.config import EvalConfig

    ev = EvalConfig(cmmlu_dir=str(root))
    with pytest.raises(DataError, match="did you mean anatomy"):
        parse_all(["cmmlu:anatomyy"], ev, tmp_path)
    (b,) = parse_all(["cmmlu:anatomy,virology"], ev, tmp_path)
    model, tok = tiny
    s = BenchSettings(limit=10, shots=1)
    results, rows = run_benchmarks(harness_model(model, tok, s), [b], s, progress=False)
    r = results[b.name]
    assert r["n"] == 10 and r["shots"] == 1 and set(r["subjects"]) == {"anatomy", "virology"}
    assert all(x["where"].startswith(str(root / "test")) for x in rows)
    assert 0 <= r["metrics"]["acc"]["value"] <= 1


def test_benchmarks_are_a_stage_option_the_classifier_refuses(tmp_path, mcq_file):
    from seektune.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.benchmarks"):
        load_config(None, ["model.name_or_path=tiny-qwen2", "model.task=sequence_classification",
                           "train.stage=classify", f"eval.benchmarks=[mcq:{mcq_file}]"])
    with pytest.raises(ConfigError, match="unknown benchmark 'mmlu'"):
        load_config(None, ["model.name_or_path=tiny-qwen2", "eval.benchmarks=[mmlu]"])


def test_training_with_eval_benchmarks_scores_before_and_after(tmp_path, alpaca_file, mcq_file):
    cfg = tiny_config(tmp_path, alpaca_file, eval__benchmarks=[f"mcq:{mcq_file}"], eval__before_after=False)
    result = train(cfg)
    run = tmp_path / "run"
    data = json.loads((run / "benchmarks.json").read_text(encoding="utf-8"))
    assert set(data["phases"]) == {"before", "after"}
    (row_acc, row_norm) = data["comparison"]
    assert row_acc["metric"] == "acc" and row_acc["change"]["n"] == 4
    assert row_acc["verdict"] in ("gain", "loss", "within noise")
    questions = (run / "benchmarks_questions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(questions) == 8  # 4 questions x (before, after)
    keys = [e["key"] for e in result.summary["evidence"]]
    assert "bench/mcq:exam.jsonl/acc" in keys
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## Benchmarks" in report and "mcq:exam.jsonl" in report and "[" in report


def test_cli_bench_on_a_run_with_base_and_bad_spec(tmp_path, alpaca_file, mcq_file):
    cfg = tiny_config(tmp_path, alpaca_file, eval__before_after=False)
    train(cfg)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "seektune", "eval", str(run), "--bench", f"mcq:{mcq_file}", "--base",
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((run / "eval" / "benchmarks.json").read_text(encoding="utf-8"))
    assert set(data["phases"]) == {"before", "after"} and data["comparison"]
    assert "Benchmarks" in (run / "eval" / "report.md").read_text(encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "seektune", "eval", str(run), "--bench", "mmlu"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown benchmark 'mmlu'" in (r.stderr + r.stdout)
    assert "Traceback" not in r.stderr


def test_a_served_model_scores_as_the_loaded_one(tmp_path, mcq_file):
    """`seektune eval --endpoint`: the harness's API client over `seektune serve`'s echo + logprobs
    gives the same option log-likelihoods as the in-process model (a deployed model, scored the same way)."""
    from seektune.eval.benchmarks.harness import endpoint_model
    from seektune.serve.server import ServeOptions, ThreadedServer, build_app, load_for_serving

    loaded = load_for_serving("tiny-qwen2")
    app, _ = build_app(loaded, ServeOptions(api_key="", model_name="tiny", context_length=512, max_tokens=8))
    server = ThreadedServer(app).start()
    try:
        (b,) = parse_all([f"mcq:{mcq_file}"], _ev(tmp_path), tmp_path / "w")
        tok_dir = tmp_path / "tok"
        loaded.tok.save_pretrained(str(tok_dir))
        s = BenchSettings()
        _, api_rows = run_benchmarks(endpoint_model(server.url, "tiny", str(tok_dir), s), [b], s, progress=False)
        _, local_rows = run_benchmarks(harness_model(loaded.model, loaded.tok, s), [b], s, progress=False)
    finally:
        server.stop()
    api = {r["id"]: r for r in api_rows}
    for r in local_rows:
        assert api[r["id"]]["loglikelihoods"] == pytest.approx(r["loglikelihoods"], abs=1e-3)
        assert api[r["id"]]["acc"] == r["acc"]


def test_serve_scoring_requests_are_checked():
    from seektune.serve.server import ServeOptions, ThreadedServer, build_app, load_for_serving
    import urllib.error
    import urllib.request

    app, _ = build_app(load_for_serving("tiny-qwen2"), ServeOptions(api_key="", model_name="tiny", context_length=64))
    server = ThreadedServer(app).start()

    def post(body):
        req = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        code, out = post({"model": "tiny", "prompt": [[5, 6, 7]], "echo": True, "logprobs": 2, "max_tokens": 1})
        assert code == 200
        lp = out["choices"][0]["logprobs"]
        assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == 4
        assert all(len(t) <= 2 for t in lp["top_logprobs"][1:])
        assert max(lp["top_logprobs"][-1].values()) == pytest.approx(lp["token_logprobs"][-1])  # greedy next token
        code, out = post({"model": "tiny", "prompt": "hi", "logprobs": 1, "max_tokens": 4})
        assert code == 400 and out["error"]["param"] == "echo"
        code, out = post({"model": "tiny", "prompt": [list(range(80))], "echo": True, "logprobs": 1, "max_tokens": 1})
        assert code == 400 and out["error"]["code"] == "context_length_exceeded"
        code, out = post({"model": "tiny", "prompt": [[10 ** 7]], "echo": True, "logprobs": 1, "max_tokens": 1})
        assert code == 400 and "token ids" in out["error"]["message"]
    finally:
        server.stop()
