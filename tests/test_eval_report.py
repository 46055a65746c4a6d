"""The run report: tables, the forgetting flag, and a self-contained HTML with embedded PNGs."""

import base64
import json
from html.parser import HTMLParser

import pytest

from seektune.eval.callback import GenerationEvalCallback
from seektune.eval.report import write_report
from seektune.eval.run_eval import compare


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.flag_rows, self.alerts = [], [], 0, []
        self._in_alert = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script") or (tag == "a" and a.get("href", "").startswith("http")):
            self.links.append((tag, a))
        if tag == "tr" and a.get("class") == "flag":
            self.flag_rows += 1
        if a.get("class") == "alert":
            self._in_alert = True

    def handle_data(self, data):
        if self._in_alert:
            self.alerts.append(data)

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_alert = False


def _result(rouge, bleu, ppl, preds):
    return {"metrics": {"rouge_l": rouge, "bleu4": bleu, "exact_match": 0.0, "perplexity": ppl, "n": len(preds),
                        "lang": "zh", "seconds": 1.0},
            "samples": [{"where": f"f.jsonl:{i}", "question": f"问题{i}<b>", "reference": "答案", "prediction": p}
                        for i, p in enumerate(preds)], "source": "f.jsonl"}


def _payload(general_after_rouge):
    sets = {"heldout": {"before": _result(10.0, 2.0, 30.0, ["旧1", "旧2"]), "after": _result(20.0, 5.0, 12.0, ["新1", "新2"])},
            "general": {"before": _result(30.0, 8.0, 20.0, ["g"]), "after": _result(general_after_rouge, 8.0, 20.5, ["g2"])}}
    for name, r in sets.items():
        r["comparison"] = compare(r["before"]["metrics"], r["after"]["metrics"], 0.05 if name == "general" else None)
    return {"describe": "greedy, max_new_tokens=8", "forgetting_threshold": 0.05, "sets": sets}


def _run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("model: {name_or_path: tiny-qwen2, task: causal_lm}\nadapter: {method: lora, r: 4}\n"
                                   "data: {train: x.jsonl, max_length: 64}\ntrain: {lr: 0.001, seed: 1}\n")
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3 * (1 - s / 10)} for s in range(1, 11)]
    rows += [{"step": 5, "eval_loss": 2.6}, {"step": 5, "eval_rouge_l": 12.0, "eval_bleu4": 3.0},
             {"step": 10, "eval_rouge_l": 18.0, "eval_bleu4": 4.5}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    (d / "summary.json").write_text(json.dumps({
        "stage": "sft", "data": {"read": 10, "train": 8, "eval": 2, "rejected": 0, "truncated": 0,
                                 "accounting": "10 read = train 8 + eval 2 + rejected 0"}, "steps": 10,
        "evidence": [{"name": "eval loss", "key": "eval_loss", "before": 3.1, "after": 2.6, "better": "lower", "n": 2}],
        "curves": [{"title": "Generation metrics during training", "keys": ["eval_rouge_l", "eval_bleu4"]}]}))
    return d


def test_compare_is_direction_aware():
    rows = {r["metric"]: r for r in compare({"rouge_l": 30.0, "perplexity": 10.0}, {"rouge_l": 27.0, "perplexity": 10.4}, 0.05)}
    assert rows["rouge_l"]["relative"] == pytest.approx(-0.1) and rows["rouge_l"]["flag"]      # 10% drop
    assert rows["perplexity"]["relative"] == pytest.approx(0.04) and not rows["perplexity"]["flag"]  # 4% worse
    assert compare({"perplexity": 10.0}, {"perplexity": 11.0}, 0.05)[0]["flag"]  # ppl up 10% is a drop
    assert not compare({"rouge_l": 30.0}, {"rouge_l": 40.0}, 0.05)[0]["flag"]


def test_html_report_is_self_contained_and_flags_forgetting(tmp_path):
    d = _run_dir(tmp_path)
    md, html_path = write_report(d, _payload(general_after_rouge=24.0))  # 30 -> 24: a 20% drop
    p = _Collect()
    p.feed(html_path.read_text(encoding="utf-8"))
    assert len(p.imgs) == 4  # loss, lr, eval curves, before/after
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not p.links  # no external resources
    assert p.flag_rows == 1  # general ROUGE-L only; perplexity +2.5% is within 5%
    assert any("30.00 -> 24.00" in a and "-20.0%" in a for a in p.alerts)
    text = html_path.read_text(encoding="utf-8")
    assert "问题0&lt;b&gt;" in text and "旧1" in text and "新1" in text  # escaped, side by side
    mdt = md.read_text(encoding="utf-8")
    assert "FORGETTING WARNING" in mdt and "retention (ROUGE-L after / before): 80.0%" in mdt
    assert (d / "report_files" / "loss.png").exists() and "report_files/stage_curve_0.png" in mdt


def test_no_flag_when_general_holds(tmp_path):
    d = _run_dir(tmp_path)
    md, html_path = write_report(d, _payload(general_after_rouge=29.0))  # -3.3%: within 5%
    p = _Collect()
    p.feed(html_path.read_text(encoding="utf-8"))
    assert p.flag_rows == 0 and not p.alerts
    assert "No drop larger than 5%" in md.read_text(encoding="utf-8")


def test_report_without_eval_results_still_renders(tmp_path):
    d = _run_dir(tmp_path)
    _, html_path = write_report(d)
    p = _Collect()
    p.feed(html_path.read_text(encoding="utf-8"))
    assert len(p.imgs) == 3 and "Evaluation" not in html_path.read_text(encoding="utf-8")


def test_time_budget_skips_generation_that_would_exceed_the_share():
    cb = GenerationEvalCallback(None, None, [], None, every=1, max_time_share=0.2)
    cb.t_begin = 0.0
    assert cb.within_budget(1.0)  # first run always happens: its cost is the estimate
    cb.spent, cb.last_cost = 2.0, 2.0
    assert not cb.within_budget(10.0)  # (2 + 2) / (10 + 2) = 33% > 20%
    assert cb.within_budget(30.0)      # (2 + 2) / (30 + 2) = 12.5%


def test_every_stage_gets_its_evidence_and_curves_from_its_summary(tmp_path):
    """The report has no per-stage code: the evidence table and the extra curves come from summary.json."""
    from seektune.eval.report import evidence_rows, make_plots

    rows = evidence_rows({"stage": "rm", "evidence": [
        {"name": "held-out pair accuracy", "before": 0.48, "after": 0.66, "better": "higher", "n": 60}]})
    assert rows == [["held-out pair accuracy", "0.4800", "0.6600", "+0.1800", "higher is better", "60"]]
    assert evidence_rows({"stage": "sft"}) == [] and evidence_rows(None) == []  # a bare model has no summary
    metrics = [{"step": i, "score": 0.1 * i, "reward": 0.05 * i, "kl": 0.01 * i} for i in range(1, 4)]
    curves = [{"title": "PPO: score and KL", "keys": ["score", "reward", "kl"]}]
    assert "stage_curve_0" in make_plots(metrics, None, curves)
    assert "stage_curve_0" not in make_plots([{"step": 1, "loss": 2.0}], None, curves)  # no data, no plot
    d = _run_dir(tmp_path)
    _, html_path = write_report(d)
    text = html_path.read_text(encoding="utf-8")
    assert "Before and after" in text and "3.1000" in text and "2.6000" in text and "lower is better" in text


def test_sample_completions_with_their_rewards_go_into_the_report(tmp_path):
    """GRPO keeps held-out completions with each reward in summary.details.samples; the report shows them."""
    d = _run_dir(tmp_path)
    s = json.loads((d / "summary.json").read_text())
    s["details"] = {"samples": [{"prompt": "What is 2+3?", "reference": "#### 5", "completion": "2+3=5\n#### 5",
                                 "rewards": {"gsm8k_answer": 1.0, "gsm8k_format": 1.0}}]}
    (d / "summary.json").write_text(json.dumps(s))
    md, html_path = write_report(d)
    text = md.read_text(encoding="utf-8")
    assert "## Sample completions (1 held-out, greedy)" in text and "gsm8k_answer 1.000" in text
    assert "What is 2+3?" in html_path.read_text(encoding="utf-8")
