"""GRPO (train.stage: grpo): answer extraction, the reward library, user rewards, load-time checks,
tiny-model runs (adapter moves, rewards logged, evidence), the R1 prompt, the CLI's exit 2 for a broken
reward, the rollout monitor, and --resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from conftest import shared_data, train
from seektune.config import Config, ConfigError, load_config
from seektune.config.options.grpo import GRPOOptions, check_reward_spec
from seektune.eval.answers import (choice_letter, gsm8k_flexible, gsm8k_strict, normalise_number, reference_number,
                                   same_number)
from seektune.eval.rewards import (Context, Reward, RewardError, build_rewards, choice_answer, gsm8k_answer,
                                   overlong_penalty, repetition_penalty, think_format)

PLAIN = Context(opens_think=False, max_completion_length=8)
R1 = Context(opens_think=True, max_completion_length=8)

# ---------------------------------------------------------------------------------------------
# 1. Answer extraction
# ---------------------------------------------------------------------------------------------


def test_reference_number_reads_the_number_after_hashes_on_real_gsm8k():
    path = shared_data("reasoning/gsm8k_test.jsonl")
    rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()[:50]]
    assert len(rows) == 50
    for r in rows:
        tail = r["answer"].rsplit("####", 1)[1].strip()
        got = reference_number(r["answer"])
        assert got is not None and same_number(got, tail.replace(",", "")), (r["answer"][-80:], got)
        assert "," not in got and "$" not in got
    assert reference_number(rows[0]["answer"]) == "18"  # Janet's ducks
    # a model reply that copies the reference solution scores strictly
    assert gsm8k_strict(rows[0]["answer"]) == "18"
    assert reference_number("72") == "72" and reference_number(None) is None


@pytest.mark.parametrize("reply, strict, flexible", [
    ("The answer is $1,000.00.", None, "1000"),
    ("Janet has 16 - 3 - 4 = 9 eggs, 9 * 2 = 18, so she makes 18 dollars.\n#### 18", "18", "18"),
    ("x = 3.0", None, "3"),
    ("It is 5 degrees now and it falls by 17, so the temperature is -12.", None, "-12"),
    ("The balance changes by\n#### -7", "-7", "-7"),
    ("The result: 2.50 dollars", None, "2.5"),
    ("so the total is \\boxed{42}. (Checked with 7 and 6.)", None, "42"),
    ("\\boxed{1,234}", None, "1234"),
    ("I cannot tell from the question.", None, None),
    ("", None, None),
])
def test_gsm8k_strict_and_flexible_on_model_style_replies(reply, strict, flexible):
    assert gsm8k_strict(reply) == strict
    assert gsm8k_flexible(reply) == flexible


def test_numbers_compare_after_normalising():
    assert same_number("18", "18.0") and same_number(normalise_number("$1,000.00."), "1000")
    assert same_number("-12", normalise_number("-12.000"))
    assert not same_number("18", "19") and not same_number(None, "18") and not same_number("18", None)


@pytest.mark.parametrize("reply, letter", [
    ("答案是C", "C"),
    ("答案是C项。", "C"),
    ("分析：A项错误，B项也错误，所以答案是D项", "D"),
    ("The answer is (B).", "B"),
    ("D. 1500mL", "D"),
    ("(A) 腹水", "A"),
    ("I think A", "A"),
    ("I'd pick C.", "C"),
    ("The answer is a tricky one, but B fits.", "B"),
    ("none", None),
    ("", None),
])
def test_choice_letter(reply, letter):
    assert choice_letter(reply) == letter


def test_choice_letter_honours_the_option_letters():
    assert choice_letter("I think E is wrong, so B", letters="ABCD") == "B"
    assert choice_letter("E", letters="ABCD") is None


def test_real_cmmlu_rows_are_mcq_prompts_with_the_right_letter(tmp_path):
    import csv

    from seektune.data.formats import detect
    from seektune.data.io import read_records
    from seektune.data.prompts import read_prompts

    path = shared_data("general/cmmlu/test/clinical_knowledge.csv")
    recs = list(read_records(path))
    assert detect(recs[0].data, "sft").name == "mcq"
    with open(path, encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    rejects = []
    items, read = read_prompts(str(path), "auto", None, rejects)
    assert read == len(raw) and len(items) == len(raw) and not rejects
    for it, row in list(zip(items, raw))[:20]:
        assert it.reference == row["Answer"] and choice_letter(it.reference) == row["Answer"]
        (user,) = it.prompt
        assert user["role"] == "user" and row["Question"] in user["content"]
        for letter in "ABCD":
            assert f"{letter}. {row[letter]}" in user["content"]
        assert it.columns["Answer"] == row["Answer"]  # reward functions get Answer=[...] by name


def test_prompt_records_in_every_form(tmp_path):
    from seektune.data.prompts import read_prompts

    rows = [
        {"question": "2+2?", "answer": "2+2=4\n#### 4", "id": 7, "meta": {"x": 1}},  # GSM8K: qa, reference
        {"prompt": [{"role": "user", "content": "3+3?"}], "solution": "6"},  # trl's conversational prompt (open-r1)
        {"prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": "4+4?"}]},
        {"messages": [{"role": "user", "content": "5+5?"}]},  # a conversation ending with the user's turn
        {"prompt": "6+6?", "solution": 12},  # a prompt string alone
        {"problem": "7+7?", "solution": "14"},  # MATH-style
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},  # no user turn
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},  # ends answered
        {"foo": "bar"},
    ]
    rows[0]["completions"] = "a field named like trl's own reward argument"
    p = tmp_path / "mixed.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    rejects = []
    items, read = read_prompts(str(p), "auto", None, rejects)
    assert read == 10 and len(items) + len(rejects) == 10
    got = [(it.prompt[-1]["content"], it.reference) for it in items]
    assert got == [("2+2?", "2+2=4\n#### 4"), ("3+3?", "6"), ("4+4?", None), ("5+5?", None), ("6+6?", "12"),
                   ("7+7?", "14")]
    assert items[2].prompt[0] == {"role": "system", "content": "Think."}
    assert items[0].columns == {"question": "2+2?", "answer": "2+2=4\n#### 4", "id": 7}
    assert items[1].columns == {"solution": "6"} and items[5].columns["solution"] == "14"
    assert all(it.source == str(p) and it.where.startswith("mixed.jsonl:") for it in items)
    assert sorted(r["line"] for r in rejects) == [7, 8, 9, 10] and all(r["source"] == str(p) for r in rejects)
    # the rewards find those references by column name
    assert gsm8k_answer(PLAIN)(["p"], ["#### 6"], solution=["6"]) == [1.0]


# ---------------------------------------------------------------------------------------------
# 2. The reward library
# ---------------------------------------------------------------------------------------------

def test_gsm8k_format_rewards_the_answer_line_strict_match_reads():
    r = build_rewards(["gsm8k_format"], Context(False, 64))[0]
    got = r(["p"] * 4, ["so 5 apples.\n#### 5", "the answer is 5", "<think>\n#### 3\n</think>\nno line", "#### 1,200"])
    assert got == [1.0, 0.0, 0.0, 1.0]  # a #### line inside the reasoning does not count


def test_think_format():
    f = think_format(PLAIN)
    replies = ["<think>\nline one\nline two\n</think>\n\n#### 18",  # multi-line reasoning (re.DOTALL misses it)
               "no think",
               "<think></think>answer",  # empty reasoning
               "<think>reasoning only",  # never closed: cut at the limit
               "<think>\n  \n</think>\n\nanswer",  # whitespace is no reasoning
               "<think>\nreasoning\n</think>\n\n"]  # no answer after it
    assert f(["p"] * len(replies), replies) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # the R1 prompt already opened <think>: the reply starts inside the reasoning
    g = think_format(R1)
    assert g(["p"] * 3, ["step\n</think>\n\n#### 18", "step without close", "</think>\n\n#### 18"]) == [1.0, 0.0, 0.0]
    # conversational completions (trl's message form) work too
    assert f(["p"], [[{"role": "assistant", "content": "<think>\nr\n</think>\n\na"}]]) == [1.0]


def test_gsm8k_answer_reads_only_the_answer_after_think():
    ref = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    f = gsm8k_answer(PLAIN)
    replies = ["<think>\n9 * 2 = 18\n</think>\n\nThe answer is 20.",  # right number only in the reasoning
               "<think>\n9 * 2 = 18\n</think>\n\n#### 18",
               "<think>\n9 * 2 = 18\n</think>\n\nShe makes $18.00 a day.",
               "She makes 18 dollars."]  # no reasoning: the whole reply is the answer
    assert f(["p"] * 4, replies, answer=[ref] * 4) == [0.0, 1.0, 1.0, 1.0]
    g = gsm8k_answer(R1)
    assert g(["p"] * 3, ["18 is in here\n</think>\n\n#### 20", "so\n</think>\n\n#### 18", "cut at 18"],
             answer=[ref] * 3) == [0.0, 1.0, 0.0]
    # no reference: None (trl's "not applicable"), for that prompt only
    assert f(["p"] * 2, ["#### 18", "#### 18"], answer=["", ref]) == [None, 1.0]
    assert f(["p"], ["#### 18"]) == [None]
    # the stage's own `reference` column wins over the record's
    assert f(["p"], ["#### 5"], reference=["#### 5"], answer=[ref]) == [1.0]


def test_choice_answer_reads_the_answer_column():
    f = choice_answer(PLAIN)
    replies = ["<think>\n答案是C吗？不对\n</think>\n\n答案是D", "<think>\n答案是D\n</think>\n\n答案是C", "D. 1500mL"]
    assert f(["p"] * 3, replies, Answer=["D"] * 3) == [1.0, 0.0, 1.0]
    assert f(["p"], ["D"], Answer=[""]) == [None]
    # "I" is the pronoun here, not option I
    assert f(["p"], ["I think A"], Answer=["A"], A=["x"], B=["y"], C=["z"], D=["w"]) == [1.0]


def test_overlong_penalty_from_completion_ids():
    f = overlong_penalty(PLAIN)  # limit 8, buffer 2: 0 up to 6 tokens, then linear down to -1 at 8
    lengths = [0, 4, 6, 7, 8, 12]
    out = f(["p"] * 6, ["x"] * 6, completion_ids=[[1] * n for n in lengths])
    assert out == [0.0, 0.0, 0.0, pytest.approx(-0.5), -1.0, -1.0]
    big = overlong_penalty(Context(False, 100))  # buffer 25: 75 -> 0, 80 -> -0.2, 100 -> -1
    assert big(["p"] * 3, ["x"] * 3, completion_ids=[[1] * 75, [1] * 80, [1] * 100]) == [
        0.0, pytest.approx(-0.2), -1.0]


def test_repetition_penalty():
    f = repetition_penalty(PLAIN)
    rep = [5, 6, 7] * 4
    out = f(["p"] * 3, ["", "", ""], completion_ids=[rep, list(range(12)), [1, 2]])
    assert out[0] == pytest.approx(-(1 - 3 / 10)) and out[0] < 0
    assert out[1] == 0.0 and out[2] == 0.0
    # without ids: on words
    assert f(["p"], ["la la la la la la"])[0] < 0


def test_reward_wrapper_names_a_broken_user_function():
    def boom(prompts, completions, **kw):
        raise KeyError("answer")

    def short(prompts, completions, **kw):
        return [1.0]

    def letters(prompts, completions, **kw):
        return "x"

    def nan(prompts, completions, **kw):
        return [float("nan")] * len(completions)

    def scalar(prompts, completions, **kw):
        return 1.0

    comps = ["a", "b"]
    with pytest.raises(RewardError, match="'boom' raised KeyError"):
        Reward("boom", boom)(["p"] * 2, comps)
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        Reward("short", short)(["p"] * 2, comps)
    with pytest.raises(RewardError, match="'letters'"):
        Reward("letters", letters)(["p"] * 2, comps)
    with pytest.raises(RewardError, match="'letters' returned a non-number 'x'"):
        Reward("letters", letters)(["p"], ["a"])
    with pytest.raises(RewardError, match="'nan' returned a non-number"):
        Reward("nan", nan)(["p"] * 2, comps)
    with pytest.raises(RewardError, match="'scalar' returned float"):
        Reward("scalar", scalar)(["p"] * 2, comps)
    # None passes through (trl: not applicable), ints become floats; numpy / torch numbers are numbers
    assert Reward("ok", lambda prompts, completions, **kw: [None, 1])(["p"] * 2, comps) == [None, 1.0]
    np = pytest.importorskip("numpy")
    arr = Reward("np", lambda prompts, completions, **kw: np.array([0.5, 1.0], dtype=np.float32))(["p"] * 2, comps)
    assert arr == [0.5, 1.0] and all(type(v) is float for v in arr)
    ten = Reward("pt", lambda prompts, completions, **kw: torch.tensor([0.25, 0.0]))(["p"] * 2, comps)
    assert ten == [0.25, 0.0] and all(type(v) is float for v in ten)

    async def judged(prompts, completions, **kw):  # trl accepts async rewards, so does check_reward_spec
        return [0.5 for _ in completions]

    async def judge_fails(prompts, completions, **kw):
        raise TimeoutError("judge timed out")

    assert Reward("judged", judged)(["p"] * 2, comps) == [0.5, 0.5]
    with pytest.raises(RewardError, match="'judge_fails' raised TimeoutError: judge timed out"):
        Reward("judge_fails", judge_fails)(["p"] * 2, comps)


# ---------------------------------------------------------------------------------------------
# 3. User rewards from a file or a module; load-time checks
# ---------------------------------------------------------------------------------------------

VARIETY = "def variety(prompts, completions, **kw):\n    return [len(set(c)) / 10 for c in completions]\n"


def test_user_rewards_from_a_file_and_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(VARIETY, encoding="utf-8")
    (tmp_path / "my_reward_mod.py").write_text(
        "def brevity(prompts, completions, completion_ids=None, **kw):\n"
        "    return [-len(x) / 10 for x in completion_ids]\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = build_rewards([f"{tmp_path}/my_rewards.py:variety", "my_reward_mod:brevity", "think_format"], PLAIN)
    assert [r.name for r in rewards] == ["variety", "brevity", "think_format"]
    assert rewards[0](["p"] * 2, ["aab", "abcd"]) == [0.2, 0.4]
    assert rewards[1](["p"], ["x"], completion_ids=[[1, 2, 3]]) == [pytest.approx(-0.3)]
    # a reward bound by assignment or import is a reward too (the check reads names, not only `def`s)
    (tmp_path / "bound.py").write_text(
        "from functools import partial\nfrom my_reward_mod import brevity as short\n"
        "def _len(prompts, completions, scale=1.0, **kw):\n    return [scale * len(c) for c in completions]\n"
        "longer = partial(_len, scale=0.5)\nLIMIT = 3\n", encoding="utf-8")
    for fn in ("longer", "short"):
        assert check_reward_spec(f"{tmp_path}/bound.py:{fn}") is None
        cfg = load_config(None, ["train.stage=grpo", "train.batch_size=4", f"grpo.rewards=[{tmp_path}/bound.py:{fn}]"])
        assert cfg.grpo.rewards == [f"{tmp_path}/bound.py:{fn}"]
    longer, short = build_rewards([f"{tmp_path}/bound.py:longer", f"{tmp_path}/bound.py:short"], PLAIN)
    assert (longer.name, short.name) == ("longer", "short") and longer(["p"], ["abcd"]) == [2.0]
    with pytest.raises(RewardError, match="'LIMIT' is not a function"):
        build_rewards([f"{tmp_path}/bound.py:LIMIT"], PLAIN)
    # a relative file path is relative to the working directory (and to `base` when one is given)
    monkeypatch.chdir(tmp_path)
    assert build_rewards(["my_rewards.py:variety"], PLAIN)[0].name == "variety"
    assert check_reward_spec("my_rewards.py:variety", base=tmp_path) is None


def test_check_reward_spec_catches_broken_specs_without_running_them(tmp_path):
    (tmp_path / "ok.py").write_text(VARIETY + "raise RuntimeError('must not run at check time')\n", encoding="utf-8")
    (tmp_path / "bad.py").write_text("def f(prompts, completions:\n    return []\n", encoding="utf-8")
    assert check_reward_spec(f"{tmp_path}/ok.py:variety") is None
    assert "not found" in check_reward_spec(f"{tmp_path}/missing.py:f")
    assert "defines no function 'nope'" in check_reward_spec(f"{tmp_path}/ok.py:nope")
    assert "bad.py:1: not valid Python" in check_reward_spec(f"{tmp_path}/bad.py:f")
    assert "unknown reward 'nope'" in check_reward_spec("nope")
    assert "not importable" in check_reward_spec("no_such_package_xyz.sub:f")
    assert check_reward_spec("think_format") is None
    # a module that imports but lacks the function / a submodule that does not exist: RewardError at build time
    with pytest.raises(RewardError, match="'nope' is not a function"):
        build_rewards(["json:nope"], PLAIN)
    with pytest.raises(RewardError, match="json.no_such_sub"):
        build_rewards(["json.no_such_sub:f"], PLAIN)
    # a file whose top level raises: RewardError naming the spec, not a traceback
    with pytest.raises(RewardError, match="ok.py:variety: loading .* failed: RuntimeError"):
        build_rewards([f"{tmp_path}/ok.py:variety"], PLAIN)


def _load(*over):
    return load_config(None, ["train.stage=grpo", "train.batch_size=4", *over])


def test_bad_reward_specs_fail_at_config_load(tmp_path):
    (tmp_path / "bad.py").write_text("def f(:\n", encoding="utf-8")
    (tmp_path / "ok.py").write_text(VARIETY, encoding="utf-8")
    for spec, msg in [("nope", "unknown reward 'nope'"), (f"{tmp_path}/missing.py:f", "reward file not found"),
                      (f"{tmp_path}/ok.py:nope", "defines no function 'nope'"),
                      (f"{tmp_path}/bad.py:f", "not valid Python")]:
        with pytest.raises(ConfigError, match="grpo.rewards") as e:
            _load(f"grpo.rewards=[{spec}]")
        assert msg in str(e.value), str(e.value)
    cfg = _load(f"grpo.rewards=[{tmp_path}/ok.py:variety,repetition_penalty]")
    assert cfg.grpo.rewards == [f"{tmp_path}/ok.py:variety", "repetition_penalty"]


@pytest.mark.parametrize("over, key", [
    (["train.batch_size=6"], "grpo.num_generations"),
    (["train.batch_size=2", "train.grad_accum=2", "grpo.num_generations=3"], "grpo.num_generations"),
    (["grpo.reward_weights=[1.0]"], "grpo.reward_weights"),
    (["grpo.max_prompt_length=400", "grpo.max_completion_length=200", "data.max_length=512"], "data.max_length"),
])
def test_other_load_time_checks_name_their_key(over, key):
    with pytest.raises(ConfigError, match=key):
        _load(*over)


def test_consistent_grpo_config_loads():
    cfg = _load("train.batch_size=2", "train.grad_accum=2", "grpo.reward_weights=[1.0,0.5]",
                "grpo.max_prompt_length=64", "grpo.max_completion_length=32", "data.max_length=96")
    assert cfg.grpo.reward_weights == [1.0, 0.5]


# ---------------------------------------------------------------------------------------------
# 4. GRPO steps on tiny models
# ---------------------------------------------------------------------------------------------


class Snapshot(TrainerCallback):
    def __init__(self):
        self.before = {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}


def _prompt_file(tmp_path, n=12):
    p = tmp_path / "gsm_like.jsonl"
    rows = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?",
             "answer": f"Tom has {i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3} apples.\n#### {2 * i + 3}"}
            for i in range(n)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _grpo_cfg(tmp_path, model="tiny-qwen2", name="run", rewards=None, train_over=None, **grpo):
    rw = tmp_path / "user_rewards.py"
    if not rw.exists():
        rw.write_text(VARIETY, encoding="utf-8")
    return Config.model_validate({
        "model": {"name_or_path": model},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(_prompt_file(tmp_path)), "max_length": 96, "eval_ratio": 0.15},
        "train": {"stage": "grpo", "output_dir": str(tmp_path / name), "max_steps": 2, "batch_size": 4, "lr": 1e-2,
                  "logging_steps": 1, "seed": 0, "num_threads": 1, **(train_over or {})},
        "grpo": {"num_generations": 4, "max_completion_length": 8, "max_prompt_length": 64,
                 "rewards": rewards or [f"{rw}:variety", "repetition_penalty"], **grpo}})


def _records(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-deepseek-v3"])
def test_two_grpo_steps_change_the_adapter_and_log_every_reward(tmp_path, preset):
    snap = Snapshot()
    result = train(_grpo_cfg(tmp_path, preset), callbacks=[snap])
    before, after = snap.before, dict(result.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora
    moved = [n for n in lora if not torch.equal(before[n], after[n].detach())]
    assert moved, "no LoRA weight changed"
    assert all(not torch.equal(before[n], after[n].detach()) for n in lora if "lora_B" in n)
    base_moved = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n].detach())]
    assert not base_moved, f"frozen base weights changed: {base_moved[:5]}"
    if preset == "tiny-deepseek-v3":
        assert not any(".mlp.gate." in n for n in lora), "the router stays frozen"
        experts = [n for n in lora if ".mlp.experts." in n]
        assert experts and [n for n in lora if "shared_experts" in n], "routed and shared experts carry LoRA"
        assert any(n in moved for n in experts), "the routed experts' LoRA trains"
        # trl receives the R1 prompt: it ends inside <think>, as DeepSeek-R1's own does
        prompts = result.trainer.train_dataset["prompt"]
        assert all(p.endswith("<｜Assistant｜><think>\n") for p in prompts)
    run = tmp_path / "run"
    steps = [r for r in _records(run) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for k in ("rewards/variety/mean", "rewards/variety/std", "rewards/repetition_penalty/mean",
                  "rewards/repetition_penalty/std", "reward", "frac_reward_zero_std", "completions/clipped_ratio",
                  "completions/mean_length"):
            assert k in r, (k, sorted(r))
        assert r["rewards/variety/std"] > 0 and r["frac_reward_zero_std"] < 1, "the advantage must not be zero"
        assert 0 < r["completions/mean_length"] <= 8 and 0 <= r["completions/clipped_ratio"] <= 1
        assert r["rollout/tokens_per_s"] > 0 and r["rollout/seconds"] > 0  # the rollout phase, timed
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert s["stage"] == "grpo" and s["steps"] == 2 and s["status"]
    ev = {e["name"]: e for e in s["evidence"]}
    for name in ("variety", "repetition_penalty", "truncated_share"):
        e = ev[f"held-out {name} (greedy)"]
        assert e["n"] == s["data"]["eval"] > 0 and e["before"] is not None and e["after"] is not None
    d = s["details"]
    assert d["rewards"] == ["variety", "repetition_penalty"] and d["num_generations"] == 4
    # grouped rollouts (the CPU default): one prefill per prompt, shared by its 4 completions
    assert d["rollouts"] == "grouped" and d["rollout_work"]["completions"] == 4 * d["rollout_work"]["prompts"] == 8
    assert d["samples"] and all({"prompt", "completion", "reference", "rewards"} <= set(x) for x in d["samples"])
    assert set(d["samples"][0]["rewards"]) == {"variety", "repetition_penalty"}
    assert "#### " in d["samples"][0]["reference"]
    assert (run / "report.html").exists() and (run / "samples.jsonl").exists()
    assert (run / "final" / "adapter_config.json").exists()
    assert s["data"]["accounting"].startswith("12 read = train")


@pytest.mark.parametrize("preset, method", [("tiny-deepseek-v2", "lora"), ("tiny-qwen2", "full")])
def test_grpo_on_deepseek_v2_and_with_full_fine_tuning(tmp_path, preset, method):
    """DeepSeek-V2 (MLA without q compression + MoE, router frozen) with LoRA, and full fine-tuning:
    two steps move the trainable weights, and final/ is an adapter or a plain model accordingly."""
    cfg = _grpo_cfg(tmp_path, preset, generation="transformers")  # trl's own generate path stays covered
    cfg.adapter.method = method
    snap = Snapshot()
    result = train(cfg, callbacks=[snap])
    after = dict(result.model.named_parameters())
    moved = [n for n in snap.before if not torch.equal(snap.before[n], after[n].detach())]
    assert moved, "no weight moved"
    if method == "lora":
        assert all("lora_" in n for n in moved) and not any(".mlp.gate." in n for n in moved)
        assert any(".mlp.experts." in n for n in moved)  # routed-expert LoRA trains
        assert (tmp_path / "run" / "final" / "adapter_config.json").exists()
    else:
        assert any("self_attn.q_proj" in n for n in moved)
        assert (tmp_path / "run" / "final" / "config.json").exists()
    assert all("rewards/variety/mean" in r for r in _records(tmp_path / "run") if "loss" in r)
    d = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))["details"]
    assert d["rollouts"] == "transformers" and d["rollout_work"] is None


@pytest.mark.parametrize("opts, check", [
    ({"beta": 0.05}, "kl"),
    ({"importance_sampling_level": "sequence"}, "gspo"),
], ids=["beta", "gspo"])
def test_kl_and_gspo_runs(tmp_path, opts, check):
    result = train(_grpo_cfg(tmp_path, train_over={"max_steps": 1}, **opts))
    steps = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert len(steps) == 1
    args = result.trainer.args
    if check == "kl":
        assert args.beta == 0.05 and "kl" in steps[0] and steps[0]["kl"] >= 0
    else:
        assert args.importance_sampling_level == "sequence" and "kl" not in steps[0]
    assert result.summary["details"]["importance_sampling_level"] == args.importance_sampling_level


# ---------------------------------------------------------------------------------------------
# 5. The R1 template
# ---------------------------------------------------------------------------------------------


def test_r1_prompt_ends_inside_think_on_the_deepseek_tokenizer(tmp_path):
    from seektune.data.prompts import load_prompt_data
    from seektune.data.templates import get_template
    from seektune.models.presets import load_deepseek_tokenizer
    from seektune.stages.grpo import _fit, _rows

    cfg = _grpo_cfg(tmp_path, "tiny-deepseek-v3")
    assert cfg.data.template == "auto"
    tok = load_deepseek_tokenizer()
    template = get_template(cfg.data.template, tok)
    assert template.name == "deepseek-r1" and template.opens_think
    data = load_prompt_data(cfg.data, cfg.train.seed)
    rejects = []
    items, texts = _fit(data.train, template, tok, cfg.grpo.max_prompt_length, rejects)
    assert len(items) == len(data.train) and not rejects
    rows = _rows(items, texts)
    assert all(r["prompt"].endswith("<｜Assistant｜><think>\n") for r in rows)
    assert rows[0]["prompt"].startswith("<｜begin▁of▁sentence｜><｜User｜>Tom has")
    assert rows[0]["reference"].endswith("#### " + reference_number(rows[0]["reference"]))
    assert {"question", "answer", "reference", "prompt"} <= set(rows[0])
    # a prompt over max_prompt_length is rejected with its file:line, never cut
    _, kept = _fit(data.train[:1], template, tok, 8, rejects)
    assert not kept and "grpo.max_prompt_length=8" in rejects[0]["reason"] and rejects[0]["line"] >= 1
    assert rejects[0]["source"] == cfg.data.train, "rejects name the file as read, as every loader's do"
    # `seektune data preview` shows the same prompts; none of their characters carries loss
    from seektune.stages import preview

    shown = preview(cfg, 2)
    assert [x.text for x in shown] == texts[:2] and all(x.spans == [] for x in shown)


def test_trl_gets_one_bos_from_a_tokenizer_that_adds_its_own():
    """trl tokenizes text prompts with tok(text), special tokens on: a Llama-3-style tokenizer that adds BOS
    would see the template's BOS twice."""
    from tokenizers.processors import TemplateProcessing

    from seektune.data.prompts import PromptItem
    from seektune.data.templates import DeepSeekR1Template
    from seektune.models.presets import load_deepseek_tokenizer
    from seektune.stages.grpo import _fit

    tok = load_deepseek_tokenizer()
    item = PromptItem([{"role": "user", "content": "Tom has 3 apples. How many?"}], "#### 3", {}, "p.jsonl:1")
    template = DeepSeekR1Template()
    rendered = template.prompt(item.prompt)
    want = tok(rendered, add_special_tokens=False)["input_ids"]
    _, (text,) = _fit([item], template, tok, 64, [])
    assert text == rendered and tok(text)["input_ids"] == want  # this tokenizer adds nothing
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                              special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert tok(rendered)["input_ids"][:2] == [tok.bos_token_id] * 2
    _, (text,) = _fit([item], template, tok, 64, [])
    assert tok(text)["input_ids"] == want, "trl would see two BOS"
    rejects = []
    assert _fit([item], template, tok, len(want) - 1, rejects) == ([], []) and rejects


def test_a_tokenizer_template_that_opens_think_splits_replies_inside_the_reasoning():
    from seektune.data.templates import ChatMLTemplate, DeepSeekR1Template
    from seektune.stages.grpo import _opens_think

    assert _opens_think(DeepSeekR1Template(), [])
    assert not _opens_think(ChatMLTemplate(), ["<|im_start|>assistant\n"])
    qwq = ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"] * 2
    assert _opens_think(ChatMLTemplate(), qwq)


# ---------------------------------------------------------------------------------------------
# 6. A broken user reward from the CLI: exit 2, named, no traceback
# ---------------------------------------------------------------------------------------------


def test_cli_wrong_length_reward_exits_2_naming_it(tmp_path):
    (tmp_path / "broken.py").write_text("def one_value(prompts, completions, **kw):\n    return [1.0]\n",
                                        encoding="utf-8")
    prompts = _prompt_file(tmp_path)
    cfgf = tmp_path / "grpo.yaml"
    cfgf.write_text(
        f"model: {{name_or_path: tiny-qwen2}}\n"
        f"adapter: {{method: lora, r: 4, alpha: 8, dropout: 0.0}}\n"
        f"data: {{train: {prompts}, max_length: 96}}\n"
        f"train: {{stage: grpo, output_dir: {tmp_path / 'cli'}, max_steps: 1, batch_size: 4, num_threads: 1}}\n"
        f"grpo: {{num_generations: 4, max_completion_length: 8, max_prompt_length: 64, "
        f"rewards: [think_format, {tmp_path / 'broken.py'}:one_value]}}\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "seektune", "train", str(cfgf), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "one_value" in r.stderr and "returned 1 values" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "cli" / "final").exists()


def test_a_reward_that_breaks_during_the_rollouts_stops_the_run_naming_it(tmp_path):
    (tmp_path / "late.py").write_text(
        "def late(prompts, completions, **kw):\n"
        "    if len(completions) < 4:  # the preflight and the held-out prompts pass\n"
        "        return [0.0] * len(completions)\n"
        "    raise ValueError('boom at rollout')\n", encoding="utf-8")
    with pytest.raises(RewardError, match="'late' raised ValueError: boom at rollout"):
        train(_grpo_cfg(tmp_path, rewards=[f"{tmp_path / 'late.py'}:late"], train_over={"max_steps": 1}))
    assert not (tmp_path / "run" / "final").exists()


# ---------------------------------------------------------------------------------------------
# 7. The rollout monitor
# ---------------------------------------------------------------------------------------------


def _monitor(**over):
    from seektune.engine.monitors import Health
    from seektune.stages.grpo import RolloutMonitor

    health = Health()
    return RolloutMonitor(GRPOOptions(max_completion_length=64, **over), health), health


def _feed(mon, logs_per_step):
    for step, logs in enumerate(logs_per_step, 1):
        mon.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)


def test_rollout_monitor_warns_about_cut_completions():
    mon, health = _monitor()
    _feed(mon, [{"completions/clipped_ratio": 0.98}] * 3)
    assert len(health.warnings) == 1
    w = health.warnings[0]
    assert "max_completion_length=64" in w and "98%" in w and "step 3" in w
    _feed(mon, [{"completions/clipped_ratio": 0.98}] * 5)
    assert len(health.warnings) == 1, "one warning per kind"
    # below the threshold, or a streak that breaks: none
    mon, health = _monitor()
    _feed(mon, [{"completions/clipped_ratio": 0.4}] * 6)
    _feed(mon, [{"completions/clipped_ratio": 0.9}, {"completions/clipped_ratio": 0.9},
                {"completions/clipped_ratio": 0.1}, {"completions/clipped_ratio": 0.9}])
    assert health.warnings == []
    mon, health = _monitor(warn_after=1, warn_truncated_share=0.95)
    _feed(mon, [{"completions/clipped_ratio": 0.9}])
    assert health.warnings == []
    _feed(mon, [{"completions/clipped_ratio": 0.96}])
    assert len(health.warnings) == 1


def test_rollout_monitor_warns_about_groups_without_signal():
    mon, health = _monitor()
    _feed(mon, [{"frac_reward_zero_std": 1.0, "completions/clipped_ratio": 0.0}] * 3)
    assert len(health.warnings) == 1 and "all-equal rewards" in health.warnings[0]
    assert "num_generations" in health.warnings[0]
    mon, health = _monitor()
    _feed(mon, [{"frac_reward_zero_std": 0.5}] * 5 + [{}, {"loss": 1.0}] + [{"frac_reward_zero_std": 0.8}] * 3)
    assert health.warnings == []


def test_rollout_monitor_replays_the_steps_before_a_resume():
    mon, health = _monitor()
    mon.replay([{"step": 1, "completions/clipped_ratio": 1.0}, {"step": 2, "completions/clipped_ratio": 1.0},
                {"step": 2, "train_loss": 0.1}])
    assert health.warnings == []
    _feed(mon, [{}, {}, {"completions/clipped_ratio": 1.0}])  # step 3 of the resumed launch
    assert len(health.warnings) == 1 and health.warnings[0].startswith("step 3: 100%")


# ---------------------------------------------------------------------------------------------
# 8. --resume
# ---------------------------------------------------------------------------------------------


def test_resume_continues_from_the_checkpoint_and_reproduces_the_uninterrupted_run(tmp_path):
    from seektune.stages import run_stage

    over = {"max_steps": 4, "save_steps": 2}
    train(_grpo_cfg(tmp_path, name="A", train_over=over))
    a = tmp_path / "A"
    # B: the same run, completed (a copy of A: two fresh runs of this config are identical), then cut back
    # to checkpoint-2 as if it had been killed after step 2
    b = tmp_path / "B"
    shutil.copytree(a, b)
    assert sorted(p.name for p in (b / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(b / "final")
    shutil.rmtree(b / "checkpoints" / "checkpoint-4")
    # mark what the killed launch had logged after the checkpoint: the resumed launch must log it again
    recs = _records(b)
    (b / "metrics.jsonl").write_text("".join(json.dumps({**r, "loss": 999.0} if r.get("step", 0) > 2 else r) + "\n"
                                             for r in recs), encoding="utf-8")
    result = run_stage(_grpo_cfg(tmp_path, name="B", train_over=over), resume=True, progress=False)
    s = result.summary
    assert s["resumed_from"].endswith("checkpoint-2") and s["steps"] == 4
    ra = {r["step"]: r for r in _records(a) if "loss" in r}
    rb_all = [r for r in _records(b) if "loss" in r]
    assert [r["step"] for r in rb_all] == [1, 2, 3, 4], "every step logged once"
    rb = {r["step"]: r for r in rb_all}
    for step in (3, 4):  # trl restores the sampling RNG: the same completions, rewards and loss
        for k in ("loss", "reward", "rewards/variety/mean", "grad_norm"):
            assert rb[step][k] == pytest.approx(ra[step][k], rel=1e-5, abs=1e-9), (step, k)
    # the adapters end equal, and the rollout warnings of the uninterrupted run are not lost on resume
    sa = json.loads((a / "summary.json").read_text(encoding="utf-8"))
    assert sa["warnings"] and s["warnings"] == sa["warnings"]
    from safetensors.torch import load_file

    wa = load_file(str(a / "final" / "adapter_model.safetensors"))
    wb = load_file(str(b / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
