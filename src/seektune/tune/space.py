"""The search space of `tune.space`: dotted config keys -> Optuna distributions, and trial configs.

    train.lr: {low: 1.0e-5, high: 3.0e-4, log: true}   float range (log-uniform)
    train.epochs: {low: 1, high: 5}                     int range (both ends integers)
    adapter.r: [8, 16, 32]                              choices

Every key is checked before the first trial: each end of a range and each choice is applied to the
config and validated, so a misspelt key, a key the stage does not use or a value out of its range is
a ConfigError naming `tune.space.<key>`, not a study of failed trials.
"""

from __future__ import annotations

import copy
import math

from ..config import ConfigError, validate_config

EDGE_SHARE = 0.05  # a best value within 5% of a range's end (in its own scale) "sits on the edge"


def distributions(space: dict) -> dict:
    """Optuna distributions for every key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = CategoricalDistribution(spec)
        elif all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")) \
                and isinstance(spec.get("step", 1), int):
            out[key] = IntDistribution(spec["low"], spec["high"], log=bool(spec.get("log")), step=spec.get("step", 1))
        else:
            out[key] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                         step=spec.get("step"))
    return out


def suggest(trial, key: str, spec):
    """The trial's value for one key (Optuna's public suggest API; the distribution is fixed by the spec)."""
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    d = distributions({key: spec})[key]
    if type(d).__name__ == "IntDistribution":
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def with_params(base: dict, params: dict, output_dir: str) -> dict:
    """The raw config mapping of a trial: the base with every param set and its own run folder."""
    data = copy.deepcopy(base)
    data.pop("tune", None)
    for key, value in params.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    data.setdefault("train", {})["output_dir"] = output_dir
    return data


def check_space(base: dict, space: dict, source: str) -> None:
    """Every end of every range and every choice must make a valid config for the stage."""
    for key, spec in space.items():
        values = spec if isinstance(spec, list) else [spec["low"], spec["high"]]
        for v in values:
            try:
                validate_config(with_params(base, {key: v}, "/tmp/seektune-tune-check"), source)
            except ConfigError as e:
                raise ConfigError(f"tune.space.{key} = {v!r} does not make a valid config: {e}") from None


def base_params(cfg, space: dict) -> dict | None:
    """The config's own values of the searched keys (the baseline trial), None when one lies outside the space."""
    out = {}
    for key, spec in space.items():
        node = cfg
        for p in key.split("."):
            node = getattr(node, p, None)
        if isinstance(spec, list):
            if node not in spec:
                return None
        elif node is None or not (spec["low"] <= node <= spec["high"]):
            return None
        out[key] = node
    return out


def on_edge(space: dict, params: dict) -> list[str]:
    """Range keys whose best value sits within EDGE_SHARE of an end: the optimum may lie outside."""
    notes = []
    for key, spec in space.items():
        if isinstance(spec, list) or key not in params:
            continue
        lo, hi, v = spec["low"], spec["high"], params[key]
        f = (lambda x: math.log(x)) if spec.get("log") else (lambda x: x)
        share = (f(v) - f(lo)) / (f(hi) - f(lo))
        if share <= EDGE_SHARE or share >= 1 - EDGE_SHARE:
            end = "low" if share <= EDGE_SHARE else "high"
            notes.append(f"tune.space.{key}: the best value {v:g} sits at the {end} end of [{lo:g}, {hi:g}]; "
                         "the optimum may lie outside the range: widen it")
    return notes
