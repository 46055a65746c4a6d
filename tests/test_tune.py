"""`seektune tune` (issue 21): tiny trials on Optuna; a pruned trial stops early; a failed trial is recorded
and the study goes on; the study resumes after its process is killed; two workers share one study; and
best.yaml reproduces the best trial's metric."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import kill_when_exists, write_alpaca
from seektune.config import ConfigError


@pytest.fixture(scope="module")
def alpaca_file_module(tmp_path_factory):
    return write_alpaca(tmp_path_factory.mktemp("data") / "alpaca.jsonl")


def _cfg(tmp_path, train_file, **tune) -> Path:
    data = {
        "model": {"name_or_path": "tiny-qwen2"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train_file), "max_length": 96, "eval_ratio": 0.2, "cache": False},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 4, "lr": 1e-2,
                  "logging_steps": 1, "eval_steps": 2, "save_steps": None, "seed": 0},
        "eval": {"before_after": False, "report": False},
        "tune": {"trials": 3, "objective": "eval_loss", "space": {"train.lr": {"low": 1e-4, "high": 5e-2, "log": True}},
                 "pruner": "none", **tune},
    }
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "seektune", *args], capture_output=True, text=True, timeout=timeout)


def _study(tmp_path):
    import optuna

    url = f"sqlite:///{(tmp_path / 'run' / 'tune' / 'study.db').resolve()}"
    return optuna.load_study(study_name="run", storage=url)


@pytest.fixture(scope="module")
def study_killed_then_resumed(tmp_path_factory, alpaca_file_module):
    """`seektune tune` SIGKILLed once its first trial is done, then the same command again."""
    tmp = tmp_path_factory.mktemp("tune")
    cfg = _cfg(tmp, alpaca_file_module, trials=3)
    # trial_001 appears once the first trial is done
    kill_when_exists([sys.executable, "-m", "seektune", "tune", str(cfg)], tmp / "run" / "tune" / "trial_001")
    killed = _study(tmp)
    r = _cli("tune", str(cfg))
    return {"tmp": tmp, "cfg": cfg, "killed": killed, "resume": r}


def test_the_study_resumes_after_its_process_is_killed(study_killed_then_resumed):
    s = study_killed_then_resumed
    assert s["resume"].returncode == 0, s["resume"].stderr[-3000:]
    assert s["killed"].trials[0].state.name == "COMPLETE"
    after = _study(s["tmp"])
    assert after.trials[0].value == s["killed"].trials[0].value  # trial 0 kept, not rerun
    assert sum(t.state.name == "COMPLETE" for t in after.trials) >= 3
    assert sum(bool(t.user_attrs.get("baseline")) for t in after.trials) == 1


def test_trials_are_run_folders_and_best_yaml_reproduces_the_best_trial(study_killed_then_resumed):
    tmp, cfg = study_killed_then_resumed["tmp"], study_killed_then_resumed["cfg"]
    tune = tmp / "run" / "tune"
    summary = json.loads((tune / "summary.json").read_text())
    assert summary["states"]["complete"] >= 3 and summary["direction"] == "minimize"
    assert summary["baseline"]["trial"] == 0  # the config's own lr ran first
    study = _study(tmp)
    assert study.trials[0].params["train.lr"] == pytest.approx(1e-2)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({t.params["train.lr"] for t in done}) == len(done)
    for t in done:  # each trial is an ordinary run folder
        assert (Path(t.user_attrs["run_dir"]) / "final").is_dir()
    rows = (tune / "trials.csv").read_text().splitlines()
    assert len(rows) == len(study.trials) + 1 and "train.lr" in rows[0]
    assert (tune / "report_files" / "history.png").exists() and "## Trials" in (tune / "report.md").read_text()
    best = tune / "best.yaml"
    assert summary["best"]["yaml"] == str(best)
    assert "tune" not in yaml.safe_load(best.read_text())
    r = _cli("train", str(best), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    rerun = [json.loads(x) for x in (tune / "best_run" / "metrics.jsonl").read_text().splitlines()]
    last = [x["eval_loss"] for x in rerun if "eval_loss" in x][-1]
    assert last == pytest.approx(summary["best"]["value"], rel=1e-4)
    # the command again: the study is complete, nothing reruns
    r = _cli("tune", str(cfg))
    assert r.returncode == 0 and "finished trials" in r.stderr + r.stdout


def test_a_poor_trial_is_pruned_early_and_a_failing_one_recorded(tmp_path, alpaca_file, monkeypatch):
    from seektune.tune import results
    from seektune.tune.study import TuneRun

    import seektune.stages as stages
    from seektune.config import validate_config

    path = _cfg(tmp_path, alpaca_file, pruner="median", startup_trials=1, trials=3, prune_after_steps=4,
                space={"train.lr": [1e-2, 1e-9, 3e-3]})
    raw = yaml.safe_load(path.read_text())
    raw["train"]["max_steps"], raw["train"]["eval_steps"] = 8, 1
    run = TuneRun(validate_config(raw), raw, str(path))
    study = run.prepare()
    study.enqueue_trial({"train.lr": 1e-9})   # learns nothing: worse than the baseline at every eval
    study.enqueue_trial({"train.lr": 3e-3})   # made to fail below, as an out-of-memory would
    real = stages.run_stage

    def flaky(cfg, **kw):
        if cfg.train.lr == 3e-3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cfg, **kw)

    monkeypatch.setattr(stages, "run_stage", flaky)
    run.optimize(study)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL"], states
    pruned = study.trials[1]
    # worse from the first eval, but not pruned before tune.prune_after_steps
    assert 4 <= pruned.user_attrs["pruned_at"] < 8 and pruned.user_attrs["steps"] < 8
    assert "out of memory" in study.trials[2].user_attrs["error"]
    s = results.finish(run, study)
    assert s["states"] == {"complete": 1, "pruned": 1, "fail": 1, "running": 0}
    assert "out of memory" in (tmp_path / "run" / "tune" / "trials.csv").read_text()


def test_space_and_objective_errors_name_the_key(tmp_path, alpaca_file):
    from seektune.tune import run_tune

    with pytest.raises(ConfigError, match="tune.space.train.lerning_rate"):
        run_tune(_cfg(tmp_path, alpaca_file, space={"train.lerning_rate": [1e-3, 1e-2]}))
    with pytest.raises(ConfigError, match="tune.space.train.batch_size = 0"):  # a value out of the key's range
        run_tune(_cfg(tmp_path, alpaca_file, space={"train.batch_size": [0, 4]}))
    with pytest.raises(ConfigError, match="(?s)tune.space.train.class_weights.*not used by stage sft"):
        run_tune(_cfg(tmp_path, alpaca_file, space={"train.class_weights": ["auto"]}))
    with pytest.raises(ConfigError, match="set train.eval_steps"):
        p = _cfg(tmp_path, alpaca_file, pruner="median")
        raw = yaml.safe_load(p.read_text())
        raw["train"]["eval_steps"] = None
        p.write_text(yaml.safe_dump(raw))
        run_tune(p)
    with pytest.raises(ConfigError, match="(?s)'eval_acc' was never logged.*eval_loss"):
        run_tune(_cfg(tmp_path, alpaca_file, objective="eval_acc", direction="maximize", trials=1))
    r = _cli("tune", str(_cfg(tmp_path, alpaca_file, space={"train.lerning_rate": [1e-3]})))
    assert r.returncode == 2 and "tune.space.train.lerning_rate" in r.stderr + r.stdout


@pytest.mark.slow
@pytest.mark.skipif(__import__("os").environ.get("SEEKTUNE_LONG") != "1",
                    reason="long form only (SEEKTUNE_LONG=1): two processes on one journal store are Optuna's feature; "
                    "make test keeps the storage path through the SIGKILL/resume test")
def test_two_workers_share_one_study(tmp_path, alpaca_file):
    journal = tmp_path / "study.journal"
    cfg = _cfg(tmp_path, alpaca_file, trials=3, storage=f"journal:{journal}", baseline=False)
    procs = [subprocess.Popen([sys.executable, "-m", "seektune", "tune", str(cfg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    import optuna
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="run", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 3 <= len(done) <= 4  # each worker checks the count after its trial: at most one extra
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert len({t.number for t in done}) == len(done)
