"""Reward functions for RL with verifiable rewards (GRPO), in TRL's signature.

    f(prompts, completions, completion_ids, **columns) -> one float (or None) per completion

Built-ins (`grpo.rewards` names):
    think_format      1 when the reply reasons, closes `</think>` and then answers; multi-line
                      reasoning counts (the community format rewards miss it without re.DOTALL)
    gsm8k_answer      1 when the answer's number equals the reference's (`#### N`); GSM8K rules
    gsm8k_format      1 when the answer states its result on a `#### N` line (what strict match reads):
                      format compliance a small model can reach before it can reason in <think>
    choice_answer     1 when the answer's option letter equals the reference letter (CMMLU)
    overlong_penalty  DAPO's soft over-long punishment: 0 up to 3/4 of max_completion_length,
                      then linearly down to -1 at the limit (a cut reply gets -1)
    repetition_penalty  minus the share of repeated token 3-grams
    length_penalty    minus length / max_completion_length
User rewards: `my_rewards.py:brevity` (a file, relative to the working directory) or
`package.module:function`. Every function is wrapped: one that raises, or returns the wrong
number of values or a non-number, stops the run with a RewardError naming it; `async def`
rewards are awaited.

The reply is split into reasoning and answer the way eval and serve split it
(data/reasoning.py): accuracy rewards read the answer only, the format reward the whole reply.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
from pathlib import Path
from typing import Callable

from ..config.options.grpo import BUILTIN_REWARDS as BUILTIN  # noqa: F401 (the names, for callers)
from ..config.options.grpo import check_reward_spec as check_spec
from ..data.reasoning import THINK_CLOSE, split_generation
from .answers import choice_letter, gsm8k_flexible, gsm8k_strict, reference_number, same_number

class RewardError(ValueError):
    """A reward function misbehaved; the message names it (a user error: exit 2)."""


def completion_text(c) -> str:
    """A completion as text, whether TRL passed a string or conversational messages."""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return str(c[-1].get("content", ""))
    return str(c)


def _reference(kw: dict, i: int) -> str | None:
    for key in ("reference", "answer", "Answer", "solution", "label"):
        vals = kw.get(key)
        if vals is not None and i < len(vals) and vals[i] not in (None, ""):
            return str(vals[i])
    return None


class Context:
    """What the built-ins need to know about the run: does the prompt open <think>, the length limit."""

    def __init__(self, opens_think: bool, max_completion_length: int):
        self.opens_think = opens_think
        self.max_len = max_completion_length

    def split(self, completion) -> tuple[str | None, str]:
        return split_generation(completion_text(completion), self.opens_think)


def think_format(ctx: Context):
    def think_format(prompts, completions, **kw):
        out = []
        for c in completions:
            t = completion_text(c)
            reasoning, answer = ctx.split(t)
            closed = THINK_CLOSE in t
            out.append(1.0 if closed and reasoning and reasoning.strip() and answer.strip() else 0.0)
        return out
    return think_format


def gsm8k_answer(ctx: Context):
    def gsm8k_answer(prompts, completions, **kw):
        out = []
        for i, c in enumerate(completions):
            ref = reference_number(_reference(kw, i))
            if ref is None:
                out.append(None)  # no verifiable answer for this prompt: TRL treats None as missing
                continue
            _, answer = ctx.split(c)
            got = gsm8k_strict(answer) or gsm8k_flexible(answer)
            out.append(1.0 if same_number(got, ref) else 0.0)
        return out
    return gsm8k_answer


def gsm8k_format(ctx: Context):
    def gsm8k_format(prompts, completions, **kw):
        return [1.0 if gsm8k_strict(ctx.split(c)[1]) is not None else 0.0 for c in completions]
    return gsm8k_format


def choice_answer(ctx: Context):
    def choice_answer(prompts, completions, **kw):
        out = []
        for i, c in enumerate(completions):
            ref = _reference(kw, i)
            ref = choice_letter(ref) if ref else None
            if ref is None:
                out.append(None)
                continue
            _, answer = ctx.split(c)
            out.append(1.0 if choice_letter(answer, _options(kw, i)) == ref else 0.0)
        return out
    return choice_answer


def _options(kw: dict, i: int) -> str:
    """The option letters of prompt i when the record has them as columns (CMMLU's A..D), else A-J: a
    letter that is no option ("E" in "E is wrong, so B") is not the reply's choice."""
    found = "".join(k for k in "ABCDEFGHIJ" if isinstance(kw.get(k), (list, tuple)) and i < len(kw[k])
                    and kw[k][i] not in (None, ""))
    return found or "ABCDEFGHIJ"


def _lengths(completions, completion_ids) -> list[int]:
    if completion_ids is not None:
        return [len(x) for x in completion_ids]
    return [len(completion_text(c).split()) for c in completions]


def overlong_penalty(ctx: Context):
    def overlong_penalty(prompts, completions, completion_ids=None, **kw):
        limit = ctx.max_len
        buffer = max(1, limit // 4)
        out = []
        for n in _lengths(completions, completion_ids):
            if n <= limit - buffer:
                out.append(0.0)
            elif n < limit:
                out.append((limit - buffer - n) / buffer)
            else:
                out.append(-1.0)
        return out
    return overlong_penalty


def repetition_penalty(ctx: Context):
    def repetition_penalty(prompts, completions, completion_ids=None, **kw):
        out = []
        for i, c in enumerate(completions):
            toks = list(completion_ids[i]) if completion_ids is not None else completion_text(c).split()
            grams = [tuple(toks[j:j + 3]) for j in range(len(toks) - 2)]
            out.append(-(1.0 - len(set(grams)) / len(grams)) if grams else 0.0)
        return out
    return repetition_penalty


def length_penalty(ctx: Context):
    def length_penalty(prompts, completions, completion_ids=None, **kw):
        return [-n / ctx.max_len for n in _lengths(completions, completion_ids)]
    return length_penalty


_FACTORIES = {f.__name__: f for f in (think_format, gsm8k_answer, gsm8k_format, choice_answer, overlong_penalty,
                                      repetition_penalty, length_penalty)}


# ------------------------------------------------------------------------------------------
# User rewards and the wrapper every reward runs in
# ------------------------------------------------------------------------------------------

def load_user_reward(spec: str, base: Path | None = None) -> Callable:
    where, fn = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where) if Path(where).is_absolute() or base is None else Path(base) / where
        mod_spec = importlib.util.spec_from_file_location(f"seektune_user_rewards_{path.stem}", path)
        mod = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(mod)
        except Exception as e:  # noqa: BLE001  (user code)
            raise RewardError(f"grpo.rewards: {spec}: loading {path} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            mod = importlib.import_module(where)
        except Exception as e:  # noqa: BLE001  (user code, or a submodule that does not exist)
            raise RewardError(f"grpo.rewards: {spec}: importing {where} failed: {type(e).__name__}: {e}") from None
    f = getattr(mod, fn, None)
    if not callable(f):
        raise RewardError(f"grpo.rewards: {spec}: '{fn}' is not a function")
    return f


class Reward:
    """A reward function as TRL calls it, checked on every call; keeps the last batch for the report."""

    def __init__(self, name: str, fn: Callable):
        self.fn, self.name, self.__name__ = fn, name, name
        self.last: list = []

    def __call__(self, prompts, completions, completion_ids=None, **kw):
        try:
            out = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kw)
            if inspect.iscoroutine(out):  # an `async def` reward (trl accepts those; so does check_reward_spec)
                out = asyncio.run(out)
        except RewardError:
            raise
        except Exception as e:  # noqa: BLE001  (user code: name it instead of a traceback)
            raise RewardError(f"reward function '{self.name}' raised {type(e).__name__}: {e}") from None
        try:
            out = list(out)
        except TypeError:
            raise RewardError(f"reward function '{self.name}' returned {type(out).__name__}, not a list of "
                              f"{len(completions)} numbers") from None
        if len(out) != len(completions):
            raise RewardError(f"reward function '{self.name}' returned {len(out)} values for {len(completions)} "
                              "completions: it must return one number (or None) per completion")
        vals = [None if v is None else _number(v) for v in out]
        bad = [v for v, f in zip(out, vals) if v is not None and f is None]
        if bad:
            raise RewardError(f"reward function '{self.name}' returned a non-number {bad[0]!r}: each value must be a "
                              "finite float or None")
        self.last = vals
        return vals


def _number(v) -> float | None:
    """v as a finite float: Python, numpy and one-element torch numbers count (a user reward returning
    np.float32 values or a tensor is fine); strings, NaN and infinities do not."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one element
        return None
    return f if math.isfinite(f) else None


def build_rewards(specs: list[str], ctx: Context, base: Path | None = None) -> list[Reward]:
    out = []
    for spec in specs:
        if spec in _FACTORIES:
            out.append(Reward(spec, _FACTORIES[spec](ctx)))
        else:
            problem = check_spec(spec, base)
            if problem:
                raise RewardError(f"grpo.rewards: {problem}")
            out.append(Reward(spec.rsplit(":", 1)[1], load_user_reward(spec, base)))
    return out


def score(rewards: list[Reward], prompts: list, completions: list, completion_ids=None, columns: dict | None = None) -> dict:
    """Mean of every reward function over a set of completions (None values left out), for eval."""
    out = {}
    for r in rewards:
        vals = [v for v in r(prompts, completions, completion_ids=completion_ids, **(columns or {})) if v is not None]
        out[r.name] = round(sum(vals) / len(vals), 4) if vals else None
    return out
