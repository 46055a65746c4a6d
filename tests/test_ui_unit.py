"""The UI's non-browser parts, in seconds: path safety, the form -> config -> YAML round trip, the
host/auth refusal, what a run folder's files say about its status, Stop / Resume of a real job
subprocess (a stand-in trainer that keeps the run-folder contract) and the Data page's upload."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from seektune.config import load_config
from seektune.ui.access import AccessError, check_binding, is_local_host
from seektune.ui.form import all_specs, check_form, form_data, problems_by_key, shown_values
from seektune.ui.workspace import Workspace, WorkspaceError


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    return Workspace.open(tmp_path)


# ------------------------------------------------------------------ workspace: nothing outside it


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "data/../../outside.jsonl", "~/x.jsonl"])
def test_paths_outside_the_workspace_are_refused(ws, bad):
    with pytest.raises(WorkspaceError, match=r"data file: .* is outside the workspace"):
        ws.path(bad, "data file")


def test_a_symlink_out_of_the_workspace_is_refused(ws, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.jsonl").write_text("{}\n")
    os.symlink(outside, ws.root / "data" / "link")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.path("data/link/secret.jsonl", "data file")


def test_paths_inside_resolve_and_data_files_skip_runs_and_hidden(ws):
    assert ws.path("data/train.jsonl", "x", must_exist=True) == ws.root / "data" / "train.jsonl"
    assert ws.path(str(ws.root / "data" / "train.jsonl"), "x") == ws.root / "data" / "train.jsonl"
    with pytest.raises(WorkspaceError, match="does not exist"):
        ws.path("data/none.jsonl", "data file", must_exist=True)
    for d in ("runs/r1", ".venv/lib"):
        (ws.root / d).mkdir(parents=True)
        (ws.root / d / "metrics.jsonl").write_text("{}\n")
    assert ws.data_files() == ["data/train.jsonl"]


def test_page_handlers_refuse_traversal(ws):
    pytest.importorskip("gradio")
    from seektune.ui.context import UIContext
    from seektune.ui.pages import data, runs

    ctx = UIContext(ws)
    problems, summary, png, rejects = data.inspect(ctx, "../../etc/passwd", "")
    assert "outside the workspace" in problems and not summary and png is None
    assert "outside the workspace" in runs.show(ctx, "../../etc", None)[0]
    assert "outside the workspace" in runs.compare(ctx, ["../../etc"], "loss")[1]


# ------------------------------------------------------------------ access: localhost unless auth


def test_local_hosts():
    assert all(is_local_host(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3", "[::1]"))
    assert not any(is_local_host(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_non_local_bind_needs_auth():
    assert check_binding("127.0.0.1", None) is None
    assert check_binding("0.0.0.0", "ann:secret") == ("ann", "secret")
    with pytest.raises(AccessError, match="--host 0.0.0.0 is not a local address.*--auth user:pass"):
        check_binding("0.0.0.0", None)
    with pytest.raises(AccessError, match="--auth expects user:pass"):
        check_binding("127.0.0.1", "ann")


def test_cli_refuses_0000_without_auth_before_starting_anything():
    from typer.testing import CliRunner

    from seektune.cli import app

    res = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert "not a local address" in res.output + (res.stderr or "")


# ------------------------------------------------------------------ the form and its YAML


def _filled(ws, **keys):
    specs = all_specs()
    shown = shown_values(specs)
    idx = {s.key: i for i, s in enumerate(specs)}
    for k, v in keys.items():
        shown[idx[k.replace("__", ".")]] = v
    return specs, shown


def test_every_config_key_is_in_the_form_with_its_default():
    keys = {s.key for s in all_specs()}
    assert {"model.name_or_path", "train.max_steps", "train.fsdp.cpu_offload", "dpo.beta", "grpo.rewards",
            "eval.before_after", "monitor.grad_norm_band"} <= keys
    beta = next(s for s in all_specs() if s.key == "dpo.beta")
    assert "default: 0.1" in beta.info and beta.section == "dpo"


def test_form_to_yaml_is_exactly_what_load_config_reads(ws, tmp_path):
    specs, shown = _filled(ws, model__name_or_path="tiny-qwen2", data__train="data/train.jsonl",
                           train__max_steps="2", train__lr="0.001", train__early_stopping="{patience: 2}",
                           monitor__grad_norm_band="[0.05, 2.0]", eval__before_after=False)
    res = check_form(specs, shown, ws)
    assert res.ok, res.problems
    p = tmp_path / "run.yaml"
    p.write_text(res.yaml, encoding="utf-8")
    again = load_config(p)
    assert again.model_dump() == res.cfg.model_dump()
    assert again.train.max_steps == 2 and again.train.early_stopping.patience == 2
    # and back: the form filled from that config gives the same YAML
    assert check_form(specs, shown_values(specs, again), ws).yaml == res.yaml


def test_only_changed_keys_and_only_the_chosen_stage_section(ws):
    specs, shown = _filled(ws, train__max_steps="2", dpo__beta="0.5")
    assert form_data(specs, shown) == {"train": {"max_steps": 2}}  # dpo: hidden while the stage is sft
    specs, shown = _filled(ws, train__stage="dpo", dpo__beta="0.5")
    assert form_data(specs, shown) == {"train": {"stage": "dpo"}, "dpo": {"beta": 0.5}}


def test_problems_name_their_key_and_land_on_the_field(ws):
    specs, shown = _filled(ws, train__stage="dpo", data__train="data/train.jsonl", train__adversarial="{method: fgm}")
    res = check_form(specs, shown, ws)
    assert not res.ok and any(p.startswith("train.adversarial: not used by stage dpo") for p in res.problems)
    assert "train.adversarial" in problems_by_key(specs, res.problems)
    specs, shown = _filled(ws, data__train="../../etc/passwd")
    assert check_form(specs, shown, ws).problems == [
        f"data.train: '../../etc/passwd' is outside the workspace {ws.root}"]
    specs, shown = _filled(ws, data__train="data/train.jsonl", eval__benchmarks="['mcq:../exam.csv']",
                           data__pipeline="[{step: clean, terms: ../../etc/terms.tsv}]")
    problems = check_form(specs, shown, ws).problems
    assert [p.split(":")[0] for p in problems] == ["eval.benchmarks[0]", "data.pipeline[0].terms"], problems
    assert set(problems_by_key(specs, problems)) == {"eval.benchmarks", "data.pipeline"}
    specs, shown = _filled(ws, data__train="data/train.jsonl", eval__benchmarks="[gsm8k]")
    assert check_form(specs, shown, ws).problems[0].startswith("eval.gsm8k_file: '../shared/")  # the default
    specs, shown = _filled(ws, data__train="data/train.jsonl", train__lr="[unclosed")
    assert check_form(specs, shown, ws).problems[0].startswith("train.lr: not valid YAML")
    assert "data.train: required" in check_form(*_filled(ws), ws).problems[0]


# ------------------------------------------------------------------ run folders


def test_status_from_the_files_a_run_wrote(ws):
    from seektune.ui import jobs
    from seektune.ui.runs import list_runs, status

    done = ws.runs_dir / "done"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "done", "steps": 2, "train_loss": 1.5,
                                                   "warnings": ["grad norm above the band"]}))
    failed = ws.runs_dir / "failed"
    failed.mkdir()
    (failed / jobs.JOB).write_text(json.dumps({"pid": 2 ** 22 + 7, "created": 0, "started": 0}))
    (failed / jobs.LOG).write_text("$ seektune train ...\nerror: data.train: file not found: x.jsonl\n")
    (failed / jobs.EXIT_CODE).write_text("2\n")
    assert set(list_runs(ws)) == {"runs/done", "runs/failed"}
    s = status(ws, done)
    assert s.state == "done" and s.warnings == ["grad norm above the band"]
    s = status(ws, failed)
    assert s.state == "failed" and s.detail == "error: data.train: file not found: x.jsonl"


def test_run_pickers_follow_the_run_folders(ws):
    pytest.importorskip("gradio")
    from seektune.ui.pages.runs import run_choices

    skip = {"__type__": "update"}
    now, *updates = run_choices(ws, None, 2)  # a page just loaded: always sent
    assert now == [] and updates == [{"choices": [], "__type__": "update"}] * 2
    assert run_choices(ws, now, 2) == [skip] * 3
    (ws.runs_dir / "new").mkdir(parents=True)
    (ws.runs_dir / "new" / "metrics.jsonl").write_text("{}\n")
    now, *updates = run_choices(ws, now, 2)  # a run appeared: every picker offers it
    assert now == ["runs/new"] and all(u["choices"] == ["runs/new"] for u in updates)
    assert run_choices(ws, list(reversed(now)), 2) == [skip] * 3  # only the order changed


# ------------------------------------------------------------------ Stop / Resume of a job subprocess

# `seektune train CONFIG [--resume]` in a few lines, keeping the run-folder contract (engine/run.py) and
# the CLI's SIGTERM behaviour (engine/interrupt.py): finish the step, write a complete checkpoint
# (slowly, so a Stop that does not wait for it shows), exit 128 + 15; --resume continues after the newest
STAND_IN = """
import json, os, signal, sys, time
from pathlib import Path
import yaml

cfg = yaml.safe_load(Path(sys.argv[1]).read_text())
run, steps = Path(cfg["train"]["output_dir"]), cfg["train"]["max_steps"]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
done = sorted(int(p.parent.name.split("-")[1]) for p in run.glob("checkpoints/*/seektune_complete.json"))
first = done[-1] + 1 if "--resume" in sys.argv and done else 1
print("starting at step", first, flush=True)
for step in range(first, steps + 1):
    time.sleep(float(os.environ["STAND_IN_STEP_S"]))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "loss": 1 / step}) + "\\n")
    if stop:
        ckpt = run / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        time.sleep(0.5)
        (ckpt / "seektune_complete.json").write_text("{}")
        print(f"SIGTERM: stopped after step {step}", flush=True)
        sys.exit(143)
(run / "summary.json").write_text(json.dumps({"status": "done", "steps": steps, "train_loss": 1 / steps}))
"""


@pytest.fixture
def stand_in(ws, tmp_path_factory, monkeypatch):
    from seektune.ui import jobs

    script = tmp_path_factory.mktemp("trainer") / "train.py"
    script.write_text(STAND_IN, encoding="utf-8")
    monkeypatch.setattr(jobs, "TRAIN", [sys.executable, str(script)])
    monkeypatch.setenv("STAND_IN_STEP_S", "0.05")
    yield jobs
    for run_dir in ws.runs_dir.glob("*"):  # a failed test leaves no process behind
        jobs.stop(run_dir)


def _steps(run_dir) -> list[int]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(ln)["step"] for ln in p.read_text().splitlines()] if p.exists() else []


def _wait(cond, what: str, timeout: float = 60) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, what
        time.sleep(0.02)


def test_stop_waits_for_the_checkpoint_and_resume_continues_from_it(ws, stand_in, monkeypatch):
    from seektune.ui.runs import status

    jobs, run = stand_in, ws.runs_dir / "job"
    jobs.start(ws, run, "train:\n  output_dir: runs/job\n  max_steps: 300\n")
    _wait(lambda: len(_steps(run)) >= 2, "the job never logged a step: " + (run / jobs.LOG).read_text())
    assert status(ws, run).state == "running"
    assert "runs/job has a run in progress (stop it first)" in jobs.control(ws, "runs/job", True)

    assert jobs.control(ws, "runs/job", False) == "stopped `runs/job`"
    # Stop returned only once the trainer had written its checkpoint and exited as the CLI does on SIGTERM
    assert jobs.exit_code(run) == 143 and not jobs.is_running(run)
    stopped_at = _steps(run)[-1]
    assert [p.parent.name for p in run.glob("checkpoints/*/seektune_complete.json")] == [f"checkpoint-{stopped_at}"]
    st = status(ws, run)
    assert st.state == "stopped" and st.detail.startswith(f"at step {stopped_at};")
    assert jobs.control(ws, "runs/job", False) == "`runs/job`: no run in progress started from a UI"

    monkeypatch.setenv("STAND_IN_STEP_S", "0")
    assert jobs.control(ws, "runs/job", True) == "resuming `runs/job` from its newest checkpoint"
    _wait(lambda: jobs.exit_code(run) is not None, "the resumed job never ended")
    assert jobs.exit_code(run) == 0 and status(ws, run).state == "done"
    assert _steps(run) == list(range(1, 301))  # continued after the checkpoint: no step twice, none lost
    log = (run / jobs.LOG).read_text()  # one log, the resumed launch appended with its --resume
    assert log.index("starting at step 1\n") < log.index("ui_launch.yaml --no-progress --resume\n") < log.index(
        f"starting at step {stopped_at + 1}\n")


def test_stop_and_resume_name_the_folder_they_refuse(ws, stand_in):
    pytest.importorskip("gradio")
    from seektune.ui.form import all_specs, shown_values
    from seektune.ui.pages.train import output_dir

    jobs = stand_in
    specs = all_specs()
    shown = shown_values(specs)
    shown[[s.key for s in specs].index("train.output_dir")] = "../../etc"
    assert output_dir(specs, shown) == "../../etc"
    for resume in (False, True):
        assert "`train.output_dir`: '../../etc' is outside the workspace" in jobs.control(
            ws, "../../etc", resume, "train.output_dir")
    assert jobs.control(ws, "", False) == "**problems:**\n\n- `run folder`: empty path"
    assert "`runs/none`: no config.yaml to resume from" in jobs.control(ws, "runs/none", True)
    assert not (ws.runs_dir / "none").exists()


# ------------------------------------------------------------------ Data page upload


def _staged(ws, name: str, text: str = '{"instruction": "u", "output": "v"}\n'):
    """A file where Gradio stages an upload (GRADIO_TEMP_DIR, inside the UI's scratch folder)."""
    p = ws.scratch / "gradio" / "0123abcd" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_upload_copies_into_the_workspace_and_selects_it(ws):
    pytest.importorskip("gradio")
    from seektune.ui.context import UIContext
    from seektune.ui.pages import data

    sel, note = data.upload(UIContext(ws), _staged(ws, "mine.jsonl"))
    assert note == "uploaded to `data/uploads/mine.jsonl`"
    assert sel["value"] == "data/uploads/mine.jsonl" and "data/uploads/mine.jsonl" in sel["choices"]
    assert (ws.root / "data/uploads/mine.jsonl").read_text() == '{"instruction": "u", "output": "v"}\n'


def test_upload_refuses_what_is_not_a_staged_data_file_or_leads_outside(ws, tmp_path_factory):
    pytest.importorskip("gradio")
    from seektune.ui.context import UIContext
    from seektune.ui.pages import data

    ctx = UIContext(ws)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.jsonl").write_text("{}\n")
    for src in ("/etc/passwd", str(outside / "secret.jsonl"), str(ws.root / "data" / "train.jsonl"),
                str(ws.scratch / "gradio" / ".." / ".." / "data" / "train.jsonl")):
        sel, note = data.upload(ctx, src)  # read from anywhere but Gradio's staging: refused
        assert sel == {"__type__": "update"} and "is not a file this UI received" in note, (src, note)
    sel, note = data.upload(ctx, _staged(ws, "run.sh", "rm -rf ~\n"))
    assert "'run.sh' is not a data file" in note and not (ws.root / "data" / "uploads" / "run.sh").exists()
    os.symlink(outside, ws.root / "data" / "uploads")  # data/uploads leading out of the workspace
    sel, note = data.upload(ctx, _staged(ws, "new.jsonl"))
    assert "`upload`: 'data/uploads/new.jsonl' is outside the workspace" in note
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jsonl"]


def test_browser_test_skips_with_the_reason_when_no_browser(monkeypatch):
    pytest.importorskip("selenium")
    from ui_browser import find_browser

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.skip.Exception, match="chromium and chromedriver not on PATH.*apt-get install"):
        find_browser()


# ------------------------------------------------------------------ Export page: GGUF


def test_export_page_gguf_refuses_ignored_options_and_names_the_missing_tools(ws, tmp_path_factory, monkeypatch):
    from seektune.ui.context import UIContext
    from seektune.ui.pages import export

    (ws.root / "runs" / "r").mkdir(parents=True)
    ctx = UIContext(ws)
    md, manifest = export.export(ctx, "runs/r", "exports/r", "fp32", True, True, False, "gguf", "f16",
                                 progress=lambda *a, **k: None)
    assert "untick INT8" in md and manifest == ""
    md, _ = export.export(ctx, "runs/r", "exports/r", "fp16", False, True, False, "gguf", "f16",
                          progress=lambda *a, **k: None)
    assert "weights dtype" in md
    monkeypatch.setenv("SEEKTUNE_GGUF_TOOLS", str(tmp_path_factory.mktemp("no-tools")))  # an empty install folder
    md, _ = export.export(ctx, "runs/r", "exports/r", "fp32", False, True, False, "gguf", "q8_0",
                          progress=lambda *a, **k: None)
    assert "make gguf-tools" in md, md
    from seektune.export.gguf import llamacpp

    monkeypatch.setattr(llamacpp, "missing", lambda: "llama-cpp-python is not installed; " + llamacpp.INSTALL)
    md, _ = export.export(ctx, "runs/r", "exports/r", "fp32", False, True, False, "gguf", "q4_k_m",
                          progress=lambda *a, **k: None)
    assert "make llama-cpp" in md, md


def test_export_page_gguf_summary_shows_agreement_tokenizer_and_the_ollama_command(ws):
    from seektune.ui.context import UIContext
    from seektune.ui.pages.export import gguf_summary

    rep = {"name": "med", "gguf": "med.q8_0.gguf", "quant": "q8_0", "size_bytes": 14_100_000, "passed": True,
           "check": {"logits": {"max_abs_diff": 0.0086, "top1_agreement": 1.0}, "greedy_same": 3,
                     "greedy_prompts": 3, "token_ids_same": True, "pre": "qwen2", "pre_ok": True},
           "modelfile": {"template": "deepseek-r1", "renders_like_hf": True, "conversations": 4}}
    md = gguf_summary(UIContext(ws), ws.root / "exports" / "med", rep)
    assert "med.q8_0.gguf" in md and "14.1 MB" in md and "top-1 agreement 100.0%" in md
    assert "3 of 3 prompts" in md and "`qwen2`" in md and "deepseek-r1" in md
    assert "ollama create med -f exports/med/Modelfile" in md and "verification: passed" in md


def test_chat_page_loads_a_gguf_into_llama_cpp_when_it_exists_else_says_what_is_missing(tmp_path):
    from seektune.export.errors import ExportError
    from seektune.ui.chat import ModelCache

    with pytest.raises(ExportError, match="no such GGUF file|llama.cpp"):
        ModelCache().get(str(tmp_path / "m.q4_k_m.gguf"))  # the serving loader's own error, not a refusal
