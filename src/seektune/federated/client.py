"""A site of the federation: seektune's own recipe on local data, with only trained tensors going out.

Each round the client writes the config of one ordinary run (its local train/test files,
`train.max_steps = federate.local_steps`, a seed per round) into <work>/round_<r>/ and runs the
stage's recipe through `stages.run_stage`, with three callbacks around it:

    on_init_end     the server's global tensors go into the model's trainable parameters, before the
                    recipe measures anything, so its "before" evaluation scores the global model
    on_pre_optimizer_step  FedProx: mu * (w - w_global) is added to every trainable gradient
    (stop)          `init` stops right after the model is built (the initial tensors); `evaluate`
                    stops after the "before" evaluation (the global model on the local test set)

The recipe's own evaluation is used for every metric, so federated numbers are the numbers
`seektune train` reports. What goes back: the trainable tensors, the number of training records,
and scalar metrics (losses, accuracies, seconds): never a record, a token or a text.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

from ..config import ConfigError, validate_config
from .params import digest, get_arrays, layout, set_arrays, trainable

# keys the federation sets for every client round: a config that sets them itself would be ignored
FEDERATION_SETS = ("train.max_steps", "train.epochs", "train.resume", "train.save_steps", "train.keep_checkpoints",
                   "eval.before_after", "eval.generation", "eval.benchmarks", "data.eval", "data.eval_ratio")
FAULT_ENV = "SEEKTUNE_FED_FAIL"  # "site:round[,site:round]": that client raises in that round (fault tests)


class _Stop(Exception):
    """Raised by a callback to end the recipe once what this call needs is measured."""


def check_federated(cfg, raw: dict, source: str) -> None:
    """Refuse what a federation would silently override, and stages that cannot be federated."""
    from ..config.stages import STAGES

    spec = STAGES[cfg.train.stage]
    if not spec.federated:
        ok = ", ".join(s.name for s in STAGES.values() if s.federated)
        raise ConfigError(f"train.stage: {spec.name} is not federated here (stages that are: {ok})")
    for key in FEDERATION_SETS:
        sec, name = key.split(".")
        if name in (raw.get(sec) or {}):
            raise ConfigError(f"{source}: {key}: set by the federation for every client round (federate.local_steps, "
                              "the site's own test file, no per-round checkpoints): remove it")


def round_config(raw: dict, train: str, test: str | None, out_dir: Path, rnd: int, local_steps: int,
                 threads: int | None = None):
    """The validated config of one client round (an ordinary run folder)."""
    data = copy.deepcopy(raw)
    for k in ("federate", "tune"):
        data.pop(k, None)
    d = data.setdefault("data", {})
    d["train"], d["eval"] = train, test
    d["eval_ratio"] = 0.0
    t = data.setdefault("train", {})
    t.update(output_dir=str(out_dir), max_steps=local_steps, seed=int(t.get("seed", 42)) + rnd, save_steps=None)
    if threads and not t.get("num_threads"):
        t["num_threads"] = threads
    from ..config.stages import STAGES, honoured

    e = data.setdefault("eval", {})
    e["report"] = False
    for key in ("before_after", "generation"):  # no decoding in a client round: eval loss / the recipe's metrics
        if honoured(STAGES[t.get("stage", "sft")], f"eval.{key}"):
            e[key] = False
        else:
            e.pop(key, None)
    return validate_config(data, f"federated client round {rnd}")


def _callbacks(mode: str, arrays, mu: float, holder: dict):
    from transformers import TrainerCallback

    class FederatedRound(TrainerCallback):
        def on_init_end(self, args, state, control, model=None, processing_class=None, **kw):
            holder["model"], holder["tokenizer"] = model, processing_class
            if arrays is not None:
                set_arrays(model, arrays)
            if mu > 0:
                holder["anchor"] = [p.detach().clone() for _, p in trainable(model)]
            if mode == "init":
                raise _Stop

        def on_train_begin(self, args, state, control, **kw):
            if mode == "evaluate":
                raise _Stop

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if mu > 0:
                for (_, p), g in zip(trainable(model), holder["anchor"]):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - g, alpha=mu)

    return [FederatedRound()]


def release_memory() -> None:
    """Free the previous round's model, trainer and optimizer now and hand the pages back to the OS: a
    site process runs many rounds, and the trainer's reference cycles otherwise wait for a late gc
    (measured: +1.4 GB RSS per SmolLM2 round in one Ray actor)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def run_round(cfg, mode: str, arrays=None, mu: float = 0.0) -> dict:
    """Run the recipe of `cfg` in `mode` (init | fit | evaluate); returns what the mode produced."""
    from ..stages import run_stage

    release_memory()

    holder: dict = {}
    t0 = time.time()
    result = None
    try:
        result = run_stage(cfg, overwrite=True, progress=False, callbacks=_callbacks(mode, arrays, mu, holder))
    except _Stop:
        pass
    out = {"seconds": time.time() - t0, "model": holder.get("model"), "tokenizer": holder.get("tokenizer"),
           "run_dir": Path(cfg.train.output_dir)}
    if result is not None:
        out["summary"] = result.summary
        out["model"] = result.model
    before = Path(cfg.train.output_dir) / "before.json"
    out["before"] = json.loads(before.read_text(encoding="utf-8")) if before.exists() else {}
    return out


def scalar_metrics(prefix: str, values: dict) -> dict:
    """Flat {prefix_key: number} of a metrics dict (the recipe's before.json / evidence)."""
    out = {}
    for k, v in (values or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict):
            out.update(scalar_metrics(f"{prefix}{k}_", {kk: vv for kk, vv in v.items() if not isinstance(vv, dict)}))
    return out


def _failing(site: str, rnd: int) -> bool:
    spec = os.environ.get(FAULT_ENV, "")
    return any(part.strip() == f"{site}:{rnd}" for part in spec.split(",") if part.strip())


def round_outcome(cfg, mode: str, arrays=None, mu: float = 0.0) -> dict:
    """run_round reduced to what leaves a round (plain data: JSON and ndarrays, no model object): the trained tensors and their
    layout (init, fit), the recipe's summary and its "before" evaluation, seconds and the process's RSS."""
    out = run_round(cfg, mode, arrays, mu)
    model = out.pop("model", None)
    res = {"seconds": out["seconds"], "summary": out.get("summary") or {}, "before": out["before"]}
    if mode != "evaluate" and model is not None:
        res["arrays"], res["layout"] = get_arrays(model), layout(model)
    del model, out
    release_memory()
    res["rss_gb"] = _rss_gb()
    return res


def _rss_gb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return round(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3, 3)
    except (OSError, ValueError, IndexError):
        return 0.0


def run_isolated(cfg, mode: str, arrays=None, mu: float = 0.0, fresh: bool = True) -> dict:
    """round_outcome, in a new Python process when `fresh` (the config goes as YAML, tensors as npz, in the
    round's own folder, removed afterwards); an error in the child is raised here with the child's traceback."""
    if not fresh:
        return round_outcome(cfg, mode, arrays, mu)
    import subprocess
    import sys

    from .roundfiles import read_round, write_round

    folder = Path(cfg.train.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / "_round_in.json", folder / "_round_out.json"
    temp = [src, src.with_suffix(".npz"), dst, dst.with_suffix(".npz")]
    for p in temp[2:]:
        p.unlink(missing_ok=True)
    write_round(src, {"config": cfg.to_yaml(), "mode": mode, "mu": float(mu)}, arrays)
    try:
        proc = subprocess.run([sys.executable, "-m", "seektune.federated.worker", str(src), str(dst)],
                              stdin=subprocess.DEVNULL)
        if not dst.exists():
            raise RuntimeError(f"client round process ({mode}, {folder}) ended with exit status {proc.returncode} "
                               "and no result (killed? out of memory?)")
        result, out_arrays = read_round(dst)
    finally:
        for p in temp:
            p.unlink(missing_ok=True)
    if "error" in result:
        raise RuntimeError(f"client round ({mode}, {folder}) failed: {result['error']}\n{result['traceback']}")
    res = result["ok"]
    if out_arrays is not None:
        res["arrays"] = out_arrays
    return res


class SiteClient:
    """The Flower NumPyClient of one site (built by `make_client`; duck-typed so this module imports without flwr)."""

    def __init__(self, raw: dict, site: str, train: str, test: str | None, work_dir: Path,
                 threads: int | None = None):
        self.raw, self.site, self.train, self.test = raw, site, train, test
        self.work_dir, self.threads = Path(work_dir), threads
        self.fresh = (raw.get("federate") or {}).get("round_process", "fresh") == "fresh"
        self._n_test: int | None = None

    def _cfg(self, rnd: int, local_steps: int, name: str):
        return round_config(self.raw, self.train, self.test, self.work_dir / name, rnd, local_steps, self.threads)

    def get_parameters(self, config):
        return run_isolated(self._cfg(0, 1, "init"), "init", fresh=self.fresh)["arrays"]

    def fit(self, parameters, config):
        rnd, steps = int(config["round"]), int(config["local_steps"])
        if _failing(self.site, rnd):
            raise RuntimeError(f"{self.site}: failing round {rnd} on purpose ({FAULT_ENV})")
        mu = float(config.get("proximal_mu", 0.0))
        out = run_isolated(self._cfg(rnd, steps, f"round_{rnd:03d}"), "fit", parameters, mu, self.fresh)
        summary, lay = out["summary"], out["layout"]
        metrics = {"site": self.site, "layout_digest": digest(lay), "seconds": round(out["seconds"], 2),
                   "steps": int(summary.get("steps") or 0), "rss_gb": out["rss_gb"]}
        if isinstance(summary.get("train_loss"), (int, float)):
            metrics["train_loss"] = float(summary["train_loss"])
        for e in summary.get("evidence", []):
            for side, prefix in (("before", "global_"), ("after", "local_")):
                if isinstance(e.get(side), (int, float)) and not isinstance(e.get(side), bool):
                    metrics[prefix + e["key"]] = float(e[side])
        if config.get("want_layout"):
            metrics["layout"] = json.dumps(lay)
        n = int((summary.get("data") or {}).get("train") or 0)
        return out["arrays"], max(n, 1), metrics

    def evaluate(self, parameters, config):
        rnd = int(config["round"])
        if not self.test:
            return 0.0, 0, {"site": self.site, "no_test": 1}
        out = run_isolated(self._cfg(rnd, 1, f"eval_{rnd:03d}"), "evaluate", parameters, fresh=self.fresh)
        before = out["before"]
        flat = scalar_metrics("", before.get("metrics", before))
        loss = float(flat.get("eval_loss", flat.get("loss", 0.0)))
        if self._n_test is None:  # the site's test file does not change during a federation
            self._n_test = _count_lines(self.test)
        return loss, self._n_test, {"site": self.site, **{k: v for k, v in flat.items() if k in _REPORTED}}


_REPORTED = ("eval_loss", "accuracy", "macro_f1", "f1", "entity_f1", "loss")


def _count_lines(path: str) -> int:
    from ..data.io import read_records

    return sum(1 for _ in read_records(path, on_error="collect", errors=[]))


def make_client(site_client: SiteClient):
    """The flwr NumPyClient wrapping a SiteClient."""
    from flwr.client import NumPyClient

    class _Client(NumPyClient):
        def get_parameters(self, config):
            return site_client.get_parameters(config)

        def fit(self, parameters, config):
            return site_client.fit(parameters, config)

        def evaluate(self, parameters, config):
            return site_client.evaluate(parameters, config)

    return _Client()
