"""End to end on a tiny model: generation metrics during training, before/after, forgetting check,
the report, and `seektune eval` reproducing the run's own before/after numbers."""

import json

import pytest
from typer.testing import CliRunner

QA = [("头痛怎么办？", "多休息，必要时服用止痛药。"), ("感冒发烧吃什么药？", "可以服用退烧药，多喝水。"),
      ("失眠怎么调理？", "规律作息，睡前避免咖啡。"), ("胃痛是什么原因？", "可能是胃炎或饮食不规律。"),
      ("高血压要注意什么？", "低盐饮食，按时服药。"), ("咳嗽有痰怎么办？", "多喝温水，可用化痰药。"),
      ("腰痛怎么缓解？", "注意休息，适当热敷。"), ("过敏怎么办？", "远离过敏原，可服抗过敏药。"),
      ("便秘吃什么好？", "多吃蔬菜水果，多喝水。"), ("牙痛怎么办？", "尽快看牙医，可暂用止痛药。")]
GENERAL = [{"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
           {"instruction": "一年有几个月？", "input": "", "output": "十二个月。"},
           {"instruction": "水的化学式是什么？", "input": "", "output": "H2O。"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from seektune.config import load_config
    from conftest import train

    d = tmp_path_factory.mktemp("evalrun")
    (d / "med.jsonl").write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}, ensure_ascii=False) + "\n"
                                         for q, a in QA * 2), encoding="utf-8")
    (d / "general.json").write_text(json.dumps(GENERAL, ensure_ascii=False), encoding="utf-8")
    cfg = load_config(None, [
        "model.name_or_path=tiny-deepseek-v3", "adapter.r=4", f"data.train={d / 'med.jsonl'}", "data.max_length=64",
        "data.eval_ratio=0.2", "data.template=deepseek-v3", "data.cache=false", f"train.output_dir={d / 'run'}",
        "train.max_steps=4", "train.batch_size=4", "train.logging_steps=1", "train.num_threads=1", "train.lr=0.01",
        "eval.generate_every=2", "eval.generate_samples=3", "eval.max_new_tokens=5", "eval.batch_size=4",
        f"eval.general_eval={d / 'general.json'}", "eval.general_samples=3", "eval.samples=4"])
    train(cfg)
    return d / "run"


def test_generation_metrics_are_logged_during_training(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    gen_steps = [r["step"] for r in rows if "eval_rouge_l" in r]
    assert gen_steps and set(gen_steps) <= {2, 4}
    assert all("eval_bleu4" in r and "eval_exact_match" in r for r in rows if "eval_rouge_l" in r)
    # logging generation metrics must not swallow the training loss of the same step
    assert {r["step"] for r in rows if "loss" in r} >= {1, 2, 3, 4}


def test_before_after_and_forgetting_in_eval_json(run):
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    for name, n in (("heldout", 4), ("general", 3)):
        r = ev["sets"][name]
        assert r["before"]["metrics"]["n"] == r["after"]["metrics"]["n"] == n
        assert [s["where"] for s in r["before"]["samples"]] == [s["where"] for s in r["after"]["samples"]]
        assert {row["metric"] for row in r["comparison"]} >= {"rouge_l", "bleu4", "perplexity"}
    # lr 0.01 on the in-domain data moves the model: in-domain perplexity goes down
    held = {row["metric"]: row for row in ev["sets"]["heldout"]["comparison"]}
    assert held["perplexity"]["after"] < held["perplexity"]["before"]
    html = (run / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 3 and "general domain" in html


def test_cli_eval_reproduces_the_runs_before_and_after(run):
    from seektune.cli import app

    res = CliRunner().invoke(app, ["eval", str(run), "--base", "--general", str(run.parent / "general.json"),
                                   "--samples", "4", "--threads", "1"])
    assert res.exit_code == 0, res.output
    train_ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    cli_ev = json.loads((run / "eval" / "eval.json").read_text(encoding="utf-8"))
    for phase in ("before", "after"):  # same records, same greedy decoding: same answers
        a = [s["prediction"] for s in train_ev["sets"]["heldout"][phase]["samples"]]
        b = [s["prediction"] for s in cli_ev["sets"]["heldout"][phase]["samples"]]
        assert a == b
    assert any(s["prediction"] for s in cli_ev["sets"]["heldout"]["after"]["samples"])
    assert (run / "eval" / "report.html").exists() and (run / "eval" / "generations_heldout.jsonl").exists()


def test_cli_eval_errors_are_clear(tmp_path):
    from seektune.cli import app

    res = CliRunner().invoke(app, ["eval", "tiny-qwen2", "--data", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "not found" in res.output


def test_cli_eval_on_a_plain_model_and_on_an_adapter_folder(run, tmp_path):
    from seektune.cli import app

    data = str(run.parent / "med.jsonl")
    res = CliRunner().invoke(app, ["eval", "tiny-deepseek-v3", "--data", data, "--samples", "2", "--template",
                                   "deepseek-v3", "--no-ppl", "--out", str(tmp_path / "plain"), "--threads", "1",
                                   "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    plain = json.loads((tmp_path / "plain" / "eval.json").read_text(encoding="utf-8"))
    assert set(plain["sets"]["heldout"]) == {"after"} and plain["kind"] == "model"
    assert "perplexity" not in plain["sets"]["heldout"]["after"]["metrics"]
    # the adapter folder alone: base read from adapter_config.json, tuned answers differ from the base's
    # (final/ of a run also brings the run's eval settings: decoding is pinned here so the two calls match)
    res = CliRunner().invoke(app, ["eval", str(run / "final"), "--data", data, "--samples", "2", "--base",
                                   "--template", "deepseek-v3", "--out", str(tmp_path / "adapter"), "--threads", "1",
                                   "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    ad = json.loads((tmp_path / "adapter" / "eval.json").read_text(encoding="utf-8"))["sets"]["heldout"]
    assert ad["before"]["metrics"]["perplexity"] != ad["after"]["metrics"]["perplexity"]
    assert [s["prediction"] for s in ad["before"]["samples"]] == \
        [s["prediction"] for s in plain["sets"]["heldout"]["after"]["samples"]]  # base == the plain model
