"""`seektune federate`: the federation's two launch modes around one server and one client.

    simulate   Flower's simulation engine (Ray): N virtual clients, each with its own shard, in this
               process's machine; SecAgg+ runs here through Flower's workflow API
    serve      a Flower server on an address (`seektune federate-server`); each site runs
               `seektune federate-client` with its own files and connects over gRPC. Flower 1.42 keeps this
               API (start_server / start_client) deprecated in favour of SuperLink/SuperNode; it is the one
               that runs seektune's strategy unchanged in separate processes. SecAgg+ is not offered on it.

Telemetry is off (FLWR_TELEMETRY_ENABLED=0) unless the environment already says otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..config import ConfigError, load_config
from ..utils.console import log, warn
from .client import SiteClient, check_federated, make_client, round_config, run_round
from .server import Federation, epsilon, make_strategy
from .shards import make_shards

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _flower():
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError("seektune federate needs Flower: pip install 'seektune[federated]' (flwr[simulation]==1.42.0)") \
            from None


def load(config: str | Path, overrides: list[str]):
    """The validated config, its raw mapping (what client rounds are built from) and the checks."""
    import yaml

    cfg = load_config(config, overrides)
    raw = yaml.safe_load(cfg.to_yaml())
    user = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    for o in overrides:  # a --set of a key the federation owns is refused like the file's own
        k, _, v = o.partition("=")
        sec, _, name = k.partition(".")
        user.setdefault(sec, {})[name] = v
    check_federated(cfg, user, str(config))
    return cfg, raw


def open_folder(cfg, resume: bool, overwrite: bool) -> Path:
    folder = Path(cfg.train.output_dir)
    started = (folder / "rounds").exists() and any((folder / "rounds").iterdir())
    if started and not resume:
        if not overwrite:
            raise ConfigError(f"{folder} holds a federation ({len(list((folder / 'rounds').glob('*.safetensors')))} "
                              "saved round(s)): continue it with --resume, or start over with --overwrite")
        for name in ("rounds", "sites", "split", "final", "metrics.jsonl", "tensorboard", "layout.json",
                     "summary.json", "final_eval.json", "pooled_eval", "report.md", "report.html", "report_files"):
            p = folder / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    return folder


def _shared_labels(cfg, raw: dict, shards) -> None:
    """Every site's classification head must have the same labels in the same order. A simulation reads them
    from all shards; a deployment needs data.labels in the shared config (no site sees the others' data)."""
    if cfg.model.task == "causal_lm" or cfg.data.labels:
        return
    if shards is None or cfg.model.task != "sequence_classification":
        raise ConfigError("data.labels: the sites of a classification federation must share one label set in one "
                          "order; list it in the config (e.g. data.labels: [negative, neutral, positive])")
    from ..data.labelled import read_text_labels, sort_labels

    labels = set()
    for files in shards.sites.values():
        labels |= {x.label for x in read_text_labels(files["train"], cfg.data, [])}
    raw.setdefault("data", {})["labels"] = sort_labels(labels)
    log(f"federate: label set from all shards: {', '.join(raw['data']['labels'])}")


# -- simulation ---------------------------------------------------------------------------------------

def simulate(config: str | Path, overrides: list[str], clients: int | None = None, resume: bool = False,
             overwrite: bool = False) -> dict:
    _flower()
    cfg, raw = load(config, overrides)
    n = clients or cfg.federate.clients
    if cfg.federate.secagg is not None and cfg.federate.secagg.num_shares > n:
        raise ConfigError(f"federate.secagg.num_shares: {cfg.federate.secagg.num_shares} shares for {n} clients")
    folder = open_folder(cfg, resume, overwrite)
    shards = make_shards(cfg, n, folder / "split", log=log)
    _shared_labels(cfg, raw, shards)
    fed = Federation.open(cfg, folder, resume)
    if fed.remaining:
        _run_simulation(cfg, raw, fed, shards, n)
    return finish(cfg, raw, fed, shards, n)


def _run_simulation(cfg, raw: dict, fed: Federation, shards, n: int) -> None:
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    f = cfg.federate
    names = list(shards.sites)
    cores = os.cpu_count() or 1
    per_client = max(1, cores // f.parallel_clients)
    threads = cfg.train.num_threads or per_client
    work = fed.folder / "sites"

    def client_fn(context):
        site = names[int(context.node_config["partition-id"])]
        files = shards.sites[site]
        return make_client(SiteClient(raw, site, files["train"], files["test"], work / site, threads)).to_client()

    strategy = make_strategy(fed, n)
    mods = []
    if f.dp is not None:
        from flwr.client.mod import fixedclipping_mod

        mods.append(fixedclipping_mod)
    if f.secagg is not None:
        from flwr.client.mod import secaggplus_mod

        mods.append(secaggplus_mod)
        server_app = _secagg_server_app(fed, strategy)
    else:
        server_app = ServerApp(server_fn=lambda context: ServerAppComponents(
            strategy=strategy, config=ServerConfig(num_rounds=fed.remaining, round_timeout=f.round_timeout_s)))
    log(f"federate: simulating {n} clients x {fed.remaining} round(s) of {f.local_steps} local steps "
        f"({f.strategy}, LoRA aggregation {f.aggregation}, weights {f.weights}"
        + (f", DP noise {f.dp.noise_multiplier} clip {f.dp.clipping_norm}" if f.dp else "")
        + (", SecAgg+" if f.secagg else "") + f"); {f.parallel_clients} at a time, {threads} thread(s) each")
    backend = {"client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
               "init_args": {"num_cpus": per_client * f.parallel_clients, "include_dashboard": False,
                             "object_store_memory": 256 * 1024 ** 2, "log_to_driver": True}}
    run_simulation(server_app=server_app, client_app=ClientApp(client_fn=client_fn, mods=mods), num_supernodes=n,
                   backend_config=backend)


def _secagg_server_app(fed: Federation, strategy):
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    s = fed.cfg.federate.secagg
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=fed.remaining), strategy=strategy)
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=s.num_shares, reconstruction_threshold=s.reconstruction_threshold,
            clipping_range=s.clipping_range, quantization_range=s.quantization_range))(grid, ctx)

    return app


# -- deployment ----------------------------------------------------------------------------------------

def _read_pem(option: str, path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{option}: file not found: {p}")
    data = p.read_bytes()
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{option}: {p} is not a PEM file (no -----BEGIN line)")
    return data


def serve(config: str | Path, overrides: list[str], address: str, clients: int, resume: bool = False,
          overwrite: bool = False, tls: tuple[str, str, str] | None = None) -> dict:
    """The server of a real deployment: waits for `clients` sites, runs the rounds, writes the run folder.
    `tls` = (CA certificate, server certificate, server key) PEM files: gRPC over TLS instead of plain text."""
    _flower()
    from flwr.server import ServerConfig, start_server

    cfg, raw = load(config, overrides)
    _shared_labels(cfg, raw, None)
    if cfg.federate.secagg is not None:
        raise ConfigError("federate.secagg: SecAgg+ runs in Flower's workflow API, which seektune uses in --simulate "
                          "only; a deployment with start_server has no secure aggregation (remove federate.secagg)")
    certificates = None
    if tls is not None:
        certificates = tuple(_read_pem(o, x) for o, x in zip(("--tls-ca", "--tls-cert", "--tls-key"), tls))
    folder = open_folder(cfg, resume, overwrite)
    fed = Federation.open(cfg, folder, resume)
    if fed.remaining:
        f = cfg.federate
        log(f"federate-server: listening on {address} ({'TLS' if certificates else 'plain gRPC, no TLS'}) for "
            f"{clients} site(s); {fed.remaining} round(s) of {f.local_steps} local steps")
        start_server(server_address=address, strategy=make_strategy(fed, clients), certificates=certificates,
                     config=ServerConfig(num_rounds=fed.remaining, round_timeout=f.round_timeout_s))
    return finish(cfg, raw, fed, None, clients)


def join(config: str | Path, overrides: list[str], site: str, train: str, test: str | None, server: str,
         work_dir: str | Path | None = None, max_wait_s: float | None = None, tls_ca: str | Path | None = None) -> None:
    """One site of a deployment: connects to the server and trains locally whenever it is sampled; with
    `tls_ca` (the CA certificate that signed the server's) over TLS."""
    _flower()
    from flwr.compat.client.app import start_client

    cfg, raw = load(config, overrides)
    _shared_labels(cfg, raw, None)
    for p in (train, test):
        if p is not None and not Path(p).exists():
            raise ConfigError(f"--data/--test: file not found: {p}")
    root = _read_pem("--tls-ca", tls_ca) if tls_ca is not None else None
    work = Path(work_dir or Path(cfg.train.output_dir) / "sites" / site)
    log(f"federate-client {site}: {train}" + (f" (test {test})" if test else "") + f" -> {server}; runs in {work}")
    client = make_client(SiteClient(raw, site, train, test, work, cfg.train.num_threads))
    f = cfg.federate
    mods_note = " with client-side clipping" if f.dp is not None else ""
    if f.dp is not None:
        client = _clipped(client, f.dp.clipping_norm)
    log(f"federate-client {site}: connecting{mods_note} ({'TLS' if root else 'plain gRPC, no TLS'})")
    start_client(server_address=server, client=client.to_client(), insecure=root is None, root_certificates=root,
                 max_wait_time=max_wait_s)


def _clipped(numpy_client, clipping_norm: float):
    """Client-side fixed clipping for the start_client path, as Flower's fixedclipping_mod does it (that mod
    works on ClientApp messages, which start_client(client=...) does not take)."""
    from flwr.supercore.differential_privacy import compute_clip_model_update

    class _Clipped(type(numpy_client)):
        def fit(self, parameters, config):
            arrays, n, metrics = numpy_client.fit(parameters, config)
            compute_clip_model_update(arrays, [p.copy() for p in parameters], clipping_norm)
            return arrays, n, metrics

    return _Clipped()


# -- the end of a federation ---------------------------------------------------------------------------

def finish(cfg, raw: dict, fed: Federation, shards, n: int) -> dict:
    """final/ from the last global tensors, the pooled-test score (simulation), summary.json and the report."""
    from ..eval.report import write_report

    arrays, last = fed.last_global()
    if arrays is None:
        raise ConfigError(f"{fed.folder}: no round completed (see the log above); nothing to save")
    site0 = next(iter(shards.sites.values())) if shards else None
    final = _build_final(cfg, raw, fed, arrays, site0)
    details: dict = {"rounds_completed": last, "clients": n, "strategy": cfg.federate.strategy,
                     "lora_aggregation": cfg.federate.aggregation, "weighting": cfg.federate.weights}
    ev = _score_pooled(cfg, raw, fed, arrays, shards, site0, details) if shards is not None else []
    if cfg.federate.dp is not None:
        details["dp"] = _dp_details(cfg, last)
    rows = fed.rows
    details["bytes_up_total"] = int(sum(r.get("bytes_up", 0) for r in rows))
    details["bytes_per_round_up"] = int((rows[-1] if rows else {}).get("bytes_up", 0))
    details["dropped"] = {str(r["round"]): r["dropped"] for r in rows if r.get("dropped")}
    details["final_eval"] = _read_json(fed.folder / "final_eval.json")
    if shards is not None:
        details["split"] = shards.report
    ev += _round_evidence(rows)
    lay = fed.layout or {}
    trainable = int(sum(int(np.prod(sh)) for sh in lay.get("shapes", [])))
    summary = {"stage": f"federate ({cfg.train.stage})", "config_rows": _config_rows(cfg, last, n, lay, trainable, details),
               "trainable_params": trainable, "status": "complete" if last >= cfg.federate.rounds else "incomplete",
               "model": cfg.model.name_or_path, "adapter": cfg.adapter.method,
               "steps": last, "train_seconds": round(time.time() - fed.started, 1),
               "evidence": ev, "curves": _curves(rows), "final": str(final) if final.exists() else None,
               "data": {"accounting": (shards.report and _accounting(shards.report)) if shards else "site files"},
               "details": details, "warnings": []}
    (fed.folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str),
                                             encoding="utf-8")
    if cfg.eval.report:
        log(f"report: {write_report(fed.folder)[1]}")
    log(f"federate: {last} round(s) done; global model in {final if final.exists() else '(not built)'}; "
        f"rounds in {fed.folder / 'rounds'}")
    return summary


def _build_final(cfg, raw: dict, fed: Federation, arrays, site0: dict | None) -> Path:
    """final/: the stage's model with the last global tensors, saved as a run's final folder (peft adapter or
    full model), so eval/export/serve take the federation folder. Needs a local training file to build from."""
    final = fed.folder / "final"
    if site0 is not None or _model_is_local(cfg):
        train_file = site0["train"] if site0 else cfg.data.train
        built = run_round(round_config(raw, train_file, None, fed.folder / "final_build", 0, 1), "init", arrays)
        _save_final(built, final, fed.folder)
        shutil.rmtree(fed.folder / "final_build", ignore_errors=True)
    return final


def _score_pooled(cfg, raw: dict, fed: Federation, arrays, shards, site0: dict, details: dict) -> list:
    """Simulation: the final global model and the base model on the union of the sites' tests (evidence rows)."""
    from ..engine.summary import evidence

    if not (shards.pooled_test and cfg.federate.pooled_eval):
        return []
    scores = {}
    for name, tensors in (("pooled_eval", arrays), ("pooled_eval_base", None)):
        out = run_round(round_config(raw, site0["train"], shards.pooled_test, fed.folder / name, 0, 1),
                        "evaluate", tensors)
        scores[name] = out["before"].get("metrics", out["before"])
    pooled, base = scores["pooled_eval"], scores["pooled_eval_base"]
    details["pooled_test"] = {k: v for k, v in pooled.items() if isinstance(v, (int, float))}
    n_test = sum(s["test"] for s in shards.report["sites"].values()) if shards.report.get("sites") else None
    return [evidence(f"pooled test {k.replace('_', ' ')} (base -> federated)", round(base[k], 4), round(pooled[k], 4),
                     "lower" if "loss" in k else "higher", n_test, key=f"pooled/{k}")
            for k in ("eval_loss", "accuracy", "macro_f1")
            if isinstance(pooled.get(k), (int, float)) and isinstance(base.get(k), (int, float))]


def _dp_details(cfg, rounds: int) -> dict:
    dp = cfg.federate.dp
    eps = epsilon(dp.noise_multiplier, rounds, dp.delta)
    log(f"federate: differential privacy (epsilon {eps:.2f}, delta {dp.delta}) after {rounds} rounds")
    return {"epsilon": round(eps, 3), "delta": dp.delta, "rounds": rounds, "noise_multiplier": dp.noise_multiplier,
            "clipping_norm": dp.clipping_norm, "accountant": "RDP of the Gaussian mechanism, no sampling amplification"}


def _round_evidence(rows: list[dict]) -> list:
    """Mean metric of the incoming global model over the sites, first round -> last round."""
    from ..engine.summary import evidence

    if len(rows) < 2:
        return []
    first, last = rows[0], rows[-1]
    return [evidence(f"mean {k.replace('_', ' ')} over sites (round 1 -> round {last['round']})",
                     round(first[f"mean/{k}"], 4), round(last[f"mean/{k}"], 4), "lower" if "loss" in k else "higher",
                     last.get("clients"), key=f"mean/{k}")
            for k in ("global_eval_loss", "global_accuracy") if f"mean/{k}" in first and f"mean/{k}" in last]


def _curves(rows: list[dict]) -> list[dict]:
    sites = sorted({k.split("/")[0] for r in rows for k in r if "/" in k and not k.startswith(("mean/", "final/"))})
    keys = sorted({k for r in rows for k in r if k.startswith("mean/")})
    return [{"title": "Global model on each site's test set (start of each round)",
             "keys": [f"{s}/global_eval_loss" for s in sites] + ["mean/global_eval_loss"]},
            {"title": "After local training, per site", "keys": [f"{s}/local_eval_loss" for s in sites]},
            {"title": "Mean client metrics per round", "keys": keys},
            {"title": "LoRA aggregation error (relative to the mean update)",
             "keys": ["lora_error_product", "lora_error_separate"]}]


def _config_rows(cfg, last: int, n: int, lay: dict, trainable: int, details: dict) -> list[list[str]]:
    """The report's "what ran" rows of a federation."""
    f = cfg.federate
    rows = [["federation", f"{last} of {f.rounds} rounds x {f.local_steps} local steps (train.max_steps of "
             f"each client round), {n} clients, sample fraction {f.sample_fraction}, {f.strategy}"
             + (f" (mu {f.proximal_mu})" if f.strategy == "fedprox" else "")],
            ["aggregation", f"LoRA {f.aggregation}, weights {f.weights}"
             + (f", DP noise {f.dp.noise_multiplier} clip {f.dp.clipping_norm}" if f.dp else "")
             + (", SecAgg+" if f.secagg else "")],
            ["travelling tensors", f"{len(lay.get('names', []))} ({trainable:,} values, "
             f"{details['bytes_per_round_up'] / 1e6:.2f} MB up in the last round)"],
            ["eval data", "each site's own test file; pooled test = their union (simulation)"]]
    if f.dp is not None:
        rows.append(["differential privacy", f"epsilon {details['dp']['epsilon']} at delta {f.dp.delta}"])
    return rows


def _accounting(rep: dict) -> str:
    tr = sum(s["train"] for s in rep["sites"].values())
    te = sum(s["test"] for s in rep["sites"].values())
    return f"read {rep['read']}: site train {tr} + site test {te} + rejected {rep['rejected']}"


def _model_is_local(cfg) -> bool:
    return bool(cfg.data.train) and Path(cfg.data.train).exists()


def _save_final(built: dict, final: Path, folder: Path) -> None:
    model, tok = built["model"], built["tokenizer"]
    tmp = final.with_name("final.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if tok is not None:
        tok.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    labels = built["run_dir"] / "labels.json"
    if labels.exists():
        shutil.copy(labels, folder / "labels.json")


def _read_json(p: Path):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
