"""The server side: Flower's FedAvg/FedProx (optionally inside Flower's DP wrapper) plus the run folder.

    <output_dir>/
      config.yaml            the federation's config (re-running it reproduces the federation)
      layout.json            names and shapes of the travelling tensors (sent once by a client)
      rounds/round_NNN.safetensors   the global tensors after round NNN (complete files only)
      rounds/round_NNN.json  that round's row: clients, dropped, bytes, per-site and mean metrics
      metrics.jsonl, tensorboard/    the same rows per round (step = round), for curves
      final/                 the last global adapter (or model) with its tokenizer: `seektune eval/export/serve`
      summary.json, report.md/.html

A restarted server reads the newest complete round file and goes on from the round after it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils.console import log, warn
from .aggregate import aggregate
from .params import digest, nbytes


def _round_path(folder: Path, rnd: int, ext: str) -> Path:
    return folder / "rounds" / f"round_{rnd:03d}.{ext}"


@dataclass
class Federation:
    """What the server keeps on disk, and the state a restart continues from."""

    cfg: object
    folder: Path
    total_rounds: int
    done: int = 0                       # rounds completed before this launch (resume)
    layout: dict | None = None
    initial: list | None = None         # global tensors to start from (resume)
    rows: list = field(default_factory=list)
    sites: dict = field(default_factory=dict)   # Flower node id -> site name (for dropout reports)
    started: float = field(default_factory=time.time)
    final_eval: dict | None = None
    _writer: object = None

    @classmethod
    def open(cls, cfg, folder: Path, resume: bool) -> "Federation":
        fed = cls(cfg, folder, cfg.federate.rounds)
        (folder / "rounds").mkdir(parents=True, exist_ok=True)
        if not resume:
            return fed
        lay = folder / "layout.json"
        done = sorted(int(p.stem.split("_")[1]) for p in (folder / "rounds").glob("round_*.safetensors"))
        if done and lay.exists():
            from safetensors.numpy import load_file

            fed.layout = json.loads(lay.read_text(encoding="utf-8"))
            fed.done = done[-1]
            tensors = load_file(str(_round_path(folder, fed.done, "safetensors")))
            fed.initial = [tensors[n] for n in fed.layout["names"]]
            fed.rows = [json.loads(_round_path(folder, r, "json").read_text(encoding="utf-8"))
                        for r in range(1, fed.done + 1) if _round_path(folder, r, "json").exists()]
            _rewrite_metrics(folder, fed.rows)
            log(f"federate: resuming after round {fed.done} of {fed.total_rounds} ({_round_path(folder, fed.done, 'safetensors')})")
        return fed

    @property
    def remaining(self) -> int:
        return max(0, self.total_rounds - self.done)

    def round_config(self, server_round: int) -> dict:
        f = self.cfg.federate
        c = {"round": self.done + server_round, "local_steps": f.local_steps, "want_layout": self.layout is None}
        if f.strategy == "fedprox":
            c["proximal_mu"] = f.proximal_mu
        return c

    # -- one round ---------------------------------------------------------------------------------
    def aggregate(self, server_round: int, results: list, failures: list):
        """(global tensors, row) from the clients' FitRes, or (None, row) when too few answered."""
        from flwr.common import parameters_to_ndarrays

        f = self.cfg.federate
        rnd = self.done + server_round
        ok, refused = [], []
        for proxy, res in results:
            m = dict(res.metrics or {})
            site = str(m.get("site", proxy.cid))
            self.sites[proxy.cid] = site
            if self.layout is None and "layout" in m:
                self.layout = json.loads(m["layout"])
                _atomic_write(self.folder / "layout.json", json.dumps(self.layout).encode())
            if self.layout is not None and m.get("layout_digest") != digest(self.layout):
                refused.append(site)
                warn(f"federate round {rnd}: {site} trains different tensors than the federation (another config?); "
                     "its result is left out")
                continue
            ok.append((site, parameters_to_ndarrays(res.parameters), res.num_examples, m))
        answered = {s for s, *_ in ok} | set(refused)
        dropped = sorted(set(self.sites.values()) - answered) if self.sites else []
        row = {"round": rnd, "step": rnd, "clients": len(ok), "failures": len(failures) + len(refused),
               "dropped": dropped + refused}
        if len(ok) < f.min_clients:
            warn(f"federate round {rnd}: {len(ok)} client result(s), fewer than federate.min_clients {f.min_clients}: "
                 "the global model stays as it was")
            row["skipped"] = True
            return None, row
        weights = [n for _, _, n, _ in ok] if f.weights == "examples" else [1.0] * len(ok)
        pairs = (self.layout or {}).get("pairs", [])
        arrays, stats = aggregate([a for _, a, _, _ in ok], weights, pairs, f.aggregation)
        if f.secagg is not None:
            stats = {}  # every result carries the same (securely summed) tensors: no per-client errors to measure
        row.update(stats)
        row["weights"] = {s: round(float(w) / float(sum(weights)), 4) for (s, _, _, _), w in zip(ok, weights)}
        row["bytes_up"] = int(sum(nbytes(a) for _, a, _, _ in ok))
        row["bytes_down"] = int(nbytes(arrays) * (len(ok) + len(failures) + len(refused)))
        for site, _, n, m in ok:
            row[f"{site}/examples"] = n
            for k, v in m.items():
                if k not in ("site", "layout", "layout_digest") and isinstance(v, (int, float)):
                    row[f"{site}/{k}"] = v
        for key in sorted({k for _, _, _, m in ok for k in m if k.startswith(("global_", "local_", "train_loss"))}):
            vals = [m[key] for _, _, _, m in ok if isinstance(m.get(key), (int, float))]
            if vals:
                row[f"mean/{key}"] = float(np.mean(vals))
        return arrays, row

    def record(self, rnd: int, arrays, row: dict) -> None:
        """Save the round's global tensors (after any DP noise) and its row; the file is whole or absent."""
        from safetensors.numpy import save_file

        if arrays is not None and self.layout is not None:
            p = _round_path(self.folder, rnd, "safetensors")
            tmp = p.with_suffix(".partial")
            save_file({n: np.ascontiguousarray(a) for n, a in zip(self.layout["names"], arrays)}, str(tmp))
            os.replace(tmp, p)
        row["seconds"] = round(time.time() - self.started, 1)
        _atomic_write(_round_path(self.folder, rnd, "json"), json.dumps(row, ensure_ascii=False).encode())
        self.rows.append(row)
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._tensorboard(rnd, row)
        mean = row.get("mean/global_eval_loss", row.get("mean/local_eval_loss"))
        log(f"federate round {rnd}/{self.total_rounds}: {row['clients']} client(s)"
            + (f", dropped {', '.join(row['dropped'])}" if row["dropped"] else "")
            + (f", mean eval loss of the incoming global model {mean:.4f}" if isinstance(mean, float) else "")
            + (f", LoRA aggregation error product {row['lora_error_product']:.3g} / separate "
               f"{row['lora_error_separate']:.3g}" if "lora_error_product" in row else "")
            + f", {row.get('bytes_up', 0) / 1e6:.2f} MB up")

    def _tensorboard(self, rnd: int, row: dict) -> None:
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.folder / "tensorboard"))
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round", "step"):
                    self._writer.add_scalar(k, v, rnd)
            self._writer.flush()
        except Exception as e:  # noqa: BLE001 - TensorBoard is a view; metrics.jsonl holds the numbers
            warn(f"tensorboard: {e}")

    def last_global(self):
        """The newest saved global tensors (None before the first round completes)."""
        from safetensors.numpy import load_file

        done = sorted(int(p.stem.split("_")[1]) for p in (self.folder / "rounds").glob("round_*.safetensors"))
        if not done or self.layout is None:
            return None, 0
        t = load_file(str(_round_path(self.folder, done[-1], "safetensors")))
        return [t[n] for n in self.layout["names"]], done[-1]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _rewrite_metrics(folder: Path, rows: list[dict]) -> None:
    """metrics.jsonl holds exactly the completed rounds (a row written after the last saved round goes)."""
    _atomic_write(folder / "metrics.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def make_strategy(fed: Federation, num_clients: int):
    """Flower's FedAvg (FedProx sends mu to the clients), our averaging inside it, Flower's DP wrapper around
    it when federate.dp is set, and a recorder outside everything, so the saved tensors are what was sent."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy

    f = fed.cfg.federate
    sampled = max(1, round(f.sample_fraction * num_clients))
    last_row: dict = {}

    class SeektuneFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            arrays, row = fed.aggregate(server_round, results, failures)
            last_row.clear()
            last_row.update(row)
            return (ndarrays_to_parameters(arrays) if arrays is not None else None), {}

    inner = SeektuneFedAvg(
        fraction_fit=f.sample_fraction, min_fit_clients=min(sampled, num_clients), min_available_clients=num_clients,
        fraction_evaluate=1.0, min_evaluate_clients=1, accept_failures=True,
        initial_parameters=ndarrays_to_parameters(fed.initial) if fed.initial is not None else None,
        on_fit_config_fn=fed.round_config, on_evaluate_config_fn=lambda r: {"round": fed.done + r})
    strategy = inner
    if f.dp is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            inner, noise_multiplier=f.dp.noise_multiplier, clipping_norm=f.dp.clipping_norm,
            num_sampled_clients=sampled)

    class Recorder(Strategy):
        """Delegates to the strategy; saves what it returns, evaluates the global model after the last round."""

        def initialize_parameters(self, client_manager):
            return strategy.initialize_parameters(client_manager)

        def configure_fit(self, server_round, parameters, client_manager):
            return strategy.configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            params, metrics = strategy.aggregate_fit(server_round, results, failures)
            if not last_row:  # the DP wrapper refused the round before our averaging ran
                last_row.update({"round": fed.done + server_round, "step": fed.done + server_round,
                                 "clients": len(results), "failures": len(failures), "dropped": [], "skipped": True})
            from flwr.common import parameters_to_ndarrays

            arrays = parameters_to_ndarrays(params) if params is not None else None
            fed.record(fed.done + server_round, arrays, dict(last_row))
            last_row.clear()
            return params, metrics

        def configure_evaluate(self, server_round, parameters, client_manager):
            if server_round < fed.remaining:
                return []  # the global model is scored by every fit's "before"; the final one here
            return strategy.configure_evaluate(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):
            out = {}
            for _, res in results:
                site = str((res.metrics or {}).get("site"))
                for k, v in (res.metrics or {}).items():
                    if k != "site" and isinstance(v, (int, float)):
                        out[f"final/{site}/{k}"] = v
                out[f"final/{site}/examples"] = res.num_examples
            fed.final_eval = out
            _atomic_write(fed.folder / "final_eval.json", json.dumps(out, indent=1).encode())
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return Recorder()


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The (epsilon, delta) of `rounds` Gaussian mechanisms of this noise multiplier (each client's update
    clipped; noise std = multiplier x clip on the sum), by Renyi-DP composition and the conversion of
    Canonne, Kamath and Steinke (2020). No amplification by sampling is claimed, so it is an upper bound
    when federate.sample_fraction < 1."""
    if noise_multiplier <= 0:
        return float("inf")
    orders = np.concatenate([np.linspace(1.01, 8, 300), np.linspace(8, 512, 500)])
    rdp = rounds * orders / (2 * noise_multiplier ** 2)
    eps = rdp + np.log((orders - 1) / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float(max(0.0, eps.min()))
