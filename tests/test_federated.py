"""Federated fine-tuning (issue 20): averaging, shards, privacy accounting, the server's rounds, and both
launch modes end to end on a tiny model (Flower's simulation engine, and a server + clients over gRPC)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seektune.config import ConfigError, validate_config
from seektune.federated.aggregate import aggregate

LONG = os.environ.get("SEEKTUNE_LONG") == "1"
SECRET = "ZQX-patient-7731"  # planted in the data: it must never appear in anything a client sends


def _lora_clients(k=3, r=2, out=12, inp=10, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(r, inp)).astype(np.float32), rng.normal(size=(out, r)).astype(np.float32),
             rng.normal(size=(out,)).astype(np.float32)] for _ in range(k)]


def test_separate_aggregation_is_the_weighted_average():
    cl, w = _lora_clients(), [10, 20, 30]
    g, stats = aggregate(cl, w, [[0, 1]], "separate")
    p = np.array(w) / 60
    for i in range(3):
        np.testing.assert_allclose(g[i], sum(pk * c[i] for pk, c in zip(p, cl)), rtol=1e-5, atol=1e-6)
    assert stats["lora_error_separate"] > 0.05  # mean(B) @ mean(A) is not the mean update


def test_product_aggregation_is_the_best_rank_r_mean_update():
    cl, w = _lora_clients(), [1, 2, 3]
    g, stats = aggregate(cl, w, [[0, 1]], "product")
    p = np.array(w) / 6
    mean_update = sum(pk * c[1].astype(np.float64) @ c[0] for pk, c in zip(p, cl))
    s = np.linalg.svd(mean_update, compute_uv=False)
    best = np.sqrt((s[2:] ** 2).sum() / (s ** 2).sum())  # Eckart-Young: the best rank-2 error
    got = np.linalg.norm(mean_update - g[1] @ g[0]) / np.linalg.norm(mean_update)
    assert got == pytest.approx(best, rel=1e-4) and stats["lora_error_product"] == pytest.approx(best, rel=1e-4)
    assert stats["lora_error_product"] < stats["lora_error_separate"]
    np.testing.assert_allclose(g[2], sum(pk * c[2] for pk, c in zip(p, cl)), rtol=1e-5, atol=1e-6)
    # one client (or identical clients): the product is reproduced exactly
    g1, st1 = aggregate(cl[:1], [1], [[0, 1]], "product")
    np.testing.assert_allclose(g1[1] @ g1[0], cl[0][1] @ cl[0][0], rtol=1e-4, atol=1e-4)
    assert st1["lora_error_product"] < 1e-5


def test_epsilon_matches_google_dp_accounting():
    from seektune.federated.server import epsilon

    # dp_accounting 0.6 RdpAccountant, GaussianDpEvent(sigma) composed T times, delta 1e-5
    for sigma, rounds, ref in [(1.0, 10, 19.0536), (0.5, 5, 30.1266), (2.0, 20, 12.3017), (1.1, 3, 8.0391)]:
        assert epsilon(sigma, rounds, 1e-5) == pytest.approx(ref, rel=2e-3)
    assert epsilon(0.0, 3, 1e-5) == float("inf")


def _records(n=60, missing=0):
    deps = ["cardio", "neuro", "internal", "internal", "derm"]
    out = []
    for i in range(n):
        r = {"instruction": f"question {i} {SECRET if i == 3 else ''}".strip(), "input": "", "output": f"answer {i}",
             "department": deps[i % len(deps)], "label": ["pos", "neg", "neu"][i % 3]}
        if i < missing:
            r.pop("department")
        out.append(r)
    return out


def _write(p: Path, rows) -> Path:
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def _fed_cfg(tmp_path, train, **fed):
    return validate_config({
        "model": {"name_or_path": "tiny-qwen2"}, "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train), "max_length": 64, "cache": False},
        "train": {"output_dir": str(tmp_path / "fed"), "batch_size": 4, "lr": 1e-2, "logging_steps": 1, "seed": 0},
        "federate": {"rounds": 2, "local_steps": 1, "clients": 3, **fed}}, "test")


@pytest.mark.parametrize("split", [{"by": "iid"}, {"by": "column", "column": "department"},
                                   {"by": "dirichlet", "column": "label", "alpha": 0.3}])
def test_shards_place_every_record_once(tmp_path, split):
    from seektune.federated.shards import make_shards

    train = _write(tmp_path / "d.jsonl", _records(60, missing=4 if split["by"] == "column" else 0))
    cfg = _fed_cfg(tmp_path, train, split={**split, "test_ratio": 0.2, "min_site_records": 2})
    sh = make_shards(cfg, 3, tmp_path / "split", log=lambda m: None)
    rep = sh.report
    seen = []
    for files in sh.sites.values():
        for key in ("train", "test"):
            if files[key]:
                seen += [json.loads(line)["output"] for line in Path(files[key]).read_text().splitlines()]
    assert rep["read"] == 60 == len(seen) + rep["rejected"] and len(set(seen)) == len(seen)
    if split["by"] == "column":
        assert rep["rejected"] == 4  # no department: rejected with the reason, not dropped
        assert "department" in (tmp_path / "split" / "rejects.jsonl").read_text()
        by_site = [set(json.loads(line)["department"] for line in Path(f["train"]).read_text().splitlines())
                   for f in sh.sites.values()]
        assert all(not (a & b) for i, a in enumerate(by_site) for b in by_site[i + 1:])  # a value lives on one site
    again = make_shards(cfg, 3, tmp_path / "split2", log=lambda m: None)
    assert again.report["sites"] == rep["sites"]  # seeded


def test_federation_refuses_keys_it_sets(tmp_path):
    from seektune.federated.app import load

    train = _write(tmp_path / "d.jsonl", _records(30))
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(f"model: {{name_or_path: tiny-qwen2}}\ndata: {{train: {train}}}\ntrain: {{max_steps: 50}}\n"
                       "federate: {rounds: 2}\n")
    with pytest.raises(ConfigError, match="train.max_steps: set by the federation"):
        load(cfgfile, [])
    with pytest.raises(Exception, match="proximal_mu: only used by strategy fedprox"):
        _fed_cfg(tmp_path, train, proximal_mu=0.1)


def _fitres(arrays, n, site, lay):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from seektune.federated.params import digest

    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n,
                  {"site": site, "layout_digest": digest(lay), "layout": json.dumps(lay), "global_eval_loss": 2.0 + n})


class _Proxy:
    def __init__(self, cid):
        self.cid = cid


def test_server_round_saves_the_weighted_average_and_survives_a_dropout(tmp_path):
    pytest.importorskip("flwr")
    from safetensors.numpy import load_file

    from seektune.federated.server import Federation, make_strategy

    train = _write(tmp_path / "d.jsonl", _records(30))
    cfg = _fed_cfg(tmp_path, train, lora_aggregation="separate", min_clients=2)
    cl = _lora_clients()
    lay = {"names": ["x.lora_A.default.weight", "x.lora_B.default.weight", "head.weight"],
           "shapes": [list(a.shape) for a in cl[0]], "pairs": [[0, 1]]}
    fed = Federation.open(cfg, tmp_path / "fed", resume=False)
    strategy = make_strategy(fed, 3)
    results = [(_Proxy(str(i)), _fitres(cl[i], n, f"site_{i}", lay)) for i, n in ((0, 10), (1, 30))]
    strategy.aggregate_fit(1, results, [RuntimeError("site_2 went away")])
    saved = load_file(str(tmp_path / "fed" / "rounds" / "round_001.safetensors"))
    for i, name in enumerate(lay["names"]):
        np.testing.assert_allclose(saved[name], 0.25 * cl[0][i] + 0.75 * cl[1][i], rtol=1e-5, atol=1e-6)
    row = json.loads((tmp_path / "fed" / "rounds" / "round_001.json").read_text())
    assert row["clients"] == 2 and row["failures"] == 1 and row["weights"] == {"site_0": 0.25, "site_1": 0.75}
    # round 2: site_1 drops, one result is below min_clients: the global stays, the row says who is missing
    strategy.aggregate_fit(2, results[:1], [RuntimeError("gone")])
    row2 = json.loads((tmp_path / "fed" / "rounds" / "round_002.json").read_text())
    assert row2["skipped"] and row2["dropped"] == ["site_1"]
    assert not (tmp_path / "fed" / "rounds" / "round_002.safetensors").exists()
    # a restarted server continues after the last saved round, from its tensors
    again = Federation.open(cfg, tmp_path / "fed", resume=True)
    assert again.done == 1 and again.round_config(1)["round"] == 2 and not again.round_config(1)["want_layout"]
    np.testing.assert_allclose(again.initial[2], saved["head.weight"])
    # the skipped round 2 is run again, so metrics.jsonl keeps the completed round only
    assert [r["round"] for r in map(json.loads, (tmp_path / "fed" / "metrics.jsonl").read_text().splitlines())] == [1]


def _sim_config(tmp_path, **fed) -> Path:
    train = _write(tmp_path / "medical.jsonl", _records(48))
    f = {"rounds": 2, "local_steps": 1, "clients": 3, "lora_aggregation": "separate", "parallel_clients": 2,
         "pooled_eval": False, "split": {"by": "column", "column": "department", "test_ratio": 0.2}, **fed}
    import yaml

    cfg = {"model": {"name_or_path": "tiny-qwen2"}, "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
           "data": {"train": str(train), "max_length": 64, "cache": False},
           "train": {"output_dir": str(tmp_path / "fed"), "batch_size": 4, "lr": 1e-2, "logging_steps": 1, "seed": 0},
           "eval": {"report": False}, "federate": f}
    p = tmp_path / "fed.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _peft_tensors(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_simulation_end_to_end(tmp_path, monkeypatch):
    """3 virtual hospitals on Flower's simulation engine. Short form: one round in which site_2 fails; the round
    goes on with the other two. SEEKTUNE_LONG=1: two rounds, site_2 fails round 2 and is reported by name.
    The round-1 global adapter is the example-weighted average of the client adapters that answered; nothing
    a client sends holds a record (only tensors of the layout, scalar metrics)."""
    pytest.importorskip("flwr")
    from seektune.federated import server as server_mod
    from seektune.federated.app import simulate

    sent = []
    real = server_mod.Federation.aggregate

    def spy(self, server_round, results, failures):
        sent.extend(res for _, res in results)
        return real(self, server_round, results, failures)

    monkeypatch.setattr(server_mod.Federation, "aggregate", spy)
    rounds = 2 if LONG else 1
    monkeypatch.setenv("SEEKTUNE_FED_FAIL", f"site_2:{rounds}")
    s = simulate(_sim_config(tmp_path, rounds=rounds), [], clients=3)
    fed = tmp_path / "fed"
    rows = [json.loads(line) for line in (fed / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rows] == [3] * (rounds - 1) + [2] and rows[-1]["failures"] == 1
    if LONG:
        assert rows[1]["dropped"] == ["site_2"]  # known by name once it has answered a round
    assert s["details"]["rounds_completed"] == rounds and (fed / "final" / "adapter_model.safetensors").exists()
    assert set(json.loads((fed / "final_eval.json").read_text())) >= {"final/site_0/eval_loss", "final/site_2/eval_loss"}

    # round 1: the saved global = the weighted average of what each answering site trained (round_001/final)
    from safetensors.numpy import load_file

    g1 = load_file(str(fed / "rounds" / "round_001.safetensors"))
    w = rows[0]["weights"]
    assert len(w) == (3 if LONG else 2)
    clients = {site: _peft_tensors(fed / "sites" / site / "round_001" / "final") for site in w}
    checked = 0
    for name, value in g1.items():
        avg = sum(w[site] * t[name.replace(".default", "")] for site, t in clients.items())
        np.testing.assert_allclose(value, avg, rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == len(json.loads((fed / "layout.json").read_text())["names"]) > 0

    # what travelled: tensors of the layout and scalar metrics, never a record
    from flwr.common import parameters_to_ndarrays

    lay = json.loads((fed / "layout.json").read_text())
    allowed = {"site", "layout", "layout_digest", "seconds", "steps", "train_loss", "global_eval_loss", "local_eval_loss", "rss_gb"}
    assert len(sent) == sum(r["clients"] for r in rows)
    for res in sent:
        arrays = parameters_to_ndarrays(res.parameters)
        assert [list(a.shape) for a in arrays] == lay["shapes"]
        assert set(res.metrics) <= allowed, set(res.metrics) - allowed
        blob = json.dumps(dict(res.metrics)).encode() + b"".join(a.tobytes() for a in arrays)
        for needle in (SECRET, "question", "answer 1", "cardio"):
            assert needle.encode() not in blob
    assert all(isinstance(v, (int, float)) for res in sent for k, v in res.metrics.items()
               if k not in ("site", "layout", "layout_digest"))


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "seektune", *args]


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    span = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def cert(subject, issuer, key, sign_key, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(span[0]).not_valid_after(span[1])
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seektune test CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, True)
    srv = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name, srv_key, ca_key, False,
               [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    return paths


@pytest.mark.slow
def test_deployment_server_and_clients_over_grpc(tmp_path):
    """`seektune federate-server` and two `seektune federate-client` processes on localhost over TLS (a throwaway
    CA), each site with its own files; one round; the server's folder holds the round, final/ and the report rows."""
    pytest.importorskip("flwr")
    import socket

    cfgfile = _sim_config(tmp_path, rounds=1, clients=2, min_clients=2)
    for i in range(2):
        _write(tmp_path / f"hospital_{i}.jsonl", _records(16)[i::2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    ca, cert, key = _tls_files(tmp_path)
    server = subprocess.Popen(_cli("federate-server", str(cfgfile), "--address", f"127.0.0.1:{port}", "--clients", "2",
                                   "--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    time.sleep(2)
    clients = [subprocess.Popen(_cli("federate-client", str(cfgfile), "--site", f"hospital_{i}", "--data",
                                     str(tmp_path / f"hospital_{i}.jsonl"), "--server", f"127.0.0.1:{port}",
                                     "--work-dir", str(tmp_path / f"work_{i}"), "--max-wait", "120",
                                     "--tls-ca", str(ca), "--set", "train.num_threads=1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
               for i in range(2)]
    try:
        out, _ = server.communicate(timeout=400)
    finally:
        for c in clients:
            try:
                c.wait(timeout=60)
            except subprocess.TimeoutExpired:
                c.kill()
    assert server.returncode == 0, out[-3000:]
    assert "(TLS)" in out and "plain gRPC" not in out
    fed = tmp_path / "fed"
    row = json.loads((fed / "rounds" / "round_001.json").read_text())
    assert row["clients"] == 2 and set(row["weights"]) == {"hospital_0", "hospital_1"}
    assert (fed / "final" / "adapter_model.safetensors").exists()
    assert (tmp_path / "work_0" / "round_001" / "final").exists() and not (fed / "sites").exists()


def test_data_labels_fix_the_head_for_every_site(tmp_path):
    """A site that never sees a label still builds the federation's head (data.labels), and a record with a
    label outside the set is rejected with the reason."""
    from seektune.data.labelled import load_sequence_data

    rows = [{"text": f"news {i}", "label": ["pos", "neu"][i % 2]} for i in range(20)] + [{"text": "odd", "label": "x"}]
    train = _write(tmp_path / "site.jsonl", rows)
    cfg = validate_config({"model": {"name_or_path": "minilm-l6", "task": "sequence_classification"},
                           "adapter": {"method": "full"},
                           "data": {"train": str(train), "labels": ["neg", "neu", "pos"], "eval_ratio": 0.2}}, "t")
    rejects: list = []
    d = load_sequence_data(cfg.data, 0, rejects)
    assert d.labels == ["neg", "neu", "pos"]
    assert [r["reason"] for r in rejects] == ["training label 'x' is not in data.labels"]
    assert d.stats["read"] == 21 == d.stats["train"] + d.stats["eval"] + d.stats["rejected"]


def test_a_round_in_a_fresh_process_trains_what_the_client_process_would(tmp_path):
    """federate.round_process fresh (the default) runs the recipe in a child process: the trained tensors
    must be the ones the in-process round gives, and the child's error must surface in the client."""
    from seektune.federated.app import load
    from seektune.federated.client import round_config, run_isolated

    cfg, raw = load(_sim_config(tmp_path), [])
    train = _write(tmp_path / "site.jsonl", _records(16))
    same = run_isolated(round_config(raw, str(train), None, tmp_path / "same", 1, 2), "fit", fresh=False)
    fresh = run_isolated(round_config(raw, str(train), None, tmp_path / "fresh", 1, 2), "fit", fresh=True)
    assert fresh["layout"] == same["layout"] and fresh["summary"]["steps"] == 2
    for a, b in zip(fresh["arrays"], same["arrays"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert fresh["rss_gb"] > 0 and not list((tmp_path / "fresh").glob("_round_*")), "the round files are removed"
    with pytest.raises(RuntimeError, match="missing.jsonl"):
        run_isolated(round_config(raw, str(tmp_path / "missing.jsonl"), None, tmp_path / "bad", 1, 2), "fit")


def test_tls_files_are_checked_before_the_server_listens(tmp_path):
    pytest.importorskip("flwr")
    from seektune.federated.app import join, serve

    ca, cert, key = _tls_files(tmp_path)
    (tmp_path / "not.pem").write_text("just text\n")
    cfgfile = _sim_config(tmp_path, rounds=1, clients=2)
    with pytest.raises(ConfigError, match=r"--tls-cert: .*not\.pem is not a PEM file"):
        serve(cfgfile, [], "127.0.0.1:1", 2, tls=(str(ca), str(tmp_path / "not.pem"), str(key)))
    with pytest.raises(ConfigError, match=r"--tls-ca: file not found: .*absent\.pem"):
        join(cfgfile, [], "a", str(_write(tmp_path / "a.jsonl", _records(4))), None, "127.0.0.1:1",
             tls_ca=str(tmp_path / "absent.pem"))
    assert not (tmp_path / "fed" / "rounds").exists(), "nothing started"
