"""End to end in a real headless browser (Debian chromium + selenium), on a tiny model:

1. the Train form filled for tiny-qwen2 and 2 steps, Check shows the YAML, Start launches the run;
2. while it trains: path traversal (../../etc/passwd) refused on the Data and Runs pages, and the Data
   page inspects the training file;
3. the curve appears, the run reaches done, and a chat prompt gets an answer from the tuned run.

The three share one page and one run, in this order. SEEKTUNE_UI_SCREENSHOTS=1 also previews samples
and exports the run, and writes a screenshot of every page into docs/ui/ (docs/ui.md shows them).
Skips with the reason when chromium, chromedriver or selenium is missing (.ci/run installs them).
"""

from __future__ import annotations

import os
import time

import pytest

from conftest import write_alpaca
from ui_browser import SHOTS_ENV, Page, chrome, find_browser, shots_dir

pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[ui]')")
SHOTS = os.environ.get(SHOTS_ENV) == "1"
RUN = "runs/ui-e2e"
RUN2 = "runs/lr0.01"  # not RUN + a suffix: typing RUN and Enter in a dropdown takes the first match


def _patient_url_ok(url: str, wait_s: float = 120) -> bool:
    """gradio's launch self-check gives the new server 5 x 3 s; a starved 2-core machine needs longer."""
    import httpx

    t0 = time.time()
    while time.time() - t0 < wait_s:
        try:
            if httpx.head(url, timeout=10).status_code in (200, 401, 302, 307):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    browser, driver = find_browser()
    from seektune.serve.server import free_port
    from seektune.ui.app import launch

    ws = tmp_path_factory.mktemp("workspace")
    (ws / "data").mkdir()
    write_alpaca(ws / "data" / "train.jsonl")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gradio.networking.url_ok", _patient_url_ok)
        demo = launch(ws, "127.0.0.1", port, block=False)
    d = chrome(browser, driver)
    try:
        tmp = tmp_path_factory.mktemp("ui")
        p = Page(d, f"http://127.0.0.1:{port}/", shots_dir(tmp), tmp)
        p.workspace, p.demo = ws, demo
        p.open()
        yield p
    finally:
        from seektune.ui import jobs

        for run_dir in (ws / "runs").glob("*"):  # a failed test leaves no training process behind
            jobs.stop(run_dir)
        d.quit()
        demo.close()


def test_served_private_and_local(page):
    assert page.demo.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] in ("1", "True")  # gradio itself writes "True" when analytics are off
    assert page.demo.server_name == "127.0.0.1" and not page.demo.share


def test_train_form_starts_a_run(page):
    page.tab("Train")
    page.fill("cfg-model-name_or_path", "tiny-qwen2")
    page.fill("cfg-data-train", "data/train.jsonl")
    page.fill("cfg-data-max_length", "96")
    page.fill("cfg-train-output_dir", RUN)
    page.fill("cfg-train-max_steps", "2")
    page.fill("cfg-train-logging_steps", "1")
    page.unfold("section-eval")
    page.press(lambda: page.el("#cfg-eval-before_after input"), "eval.before_after")  # off: the short form
    page.fill("cfg-train-lr", "fast")
    page.click("train-check")
    page.wait(lambda: "train.lr" in page.text("train-problems"), 90, "Check did not name train.lr")
    assert "PROBLEM" in page.text("cfg-train-lr")  # and under the field itself
    if SHOTS:
        page.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", page.el("#cfg-train-lr"))
        page.d.save_screenshot(str(page.shots / "train-problem.png"))
    page.fill("cfg-train-lr", "0.0002")
    page.click("train-check")
    # the problem it replaces says "valid number": wait for the valid message itself
    page.wait(lambda: "this YAML is what Start runs" in page.text("train-problems"), 90,
              "Check never said the form is valid: " + page.text("train-problems"))
    assert "name_or_path: tiny-qwen2" in page.text("train-yaml")
    page.shot("train")
    page.click("train-start")
    # Start switches to the Runs page with the new run selected
    page.wait(lambda: RUN in page.text("run-status"), 240, "the Runs page never showed the started run")
    launched = (page.workspace / RUN / "ui_launch.yaml").read_text()
    assert "max_steps: 2" in launched and "before_after: false" in launched
    if SHOTS:  # a second run, for the Compare plot
        page.tab("Train")
        page.fill("cfg-train-output_dir", RUN2)
        page.fill("cfg-train-lr", "0.01")
        page.click("train-start")
        page.wait(lambda: RUN2 in page.text("run-status"), 240, "the second run did not start")


def test_path_traversal_is_refused_and_data_inspected(page):
    page.tab("Data")
    page.fill("data-path", "../../etc/passwd", enter=True)
    page.click("data-inspect")
    page.wait(lambda: "outside the workspace" in page.text("data-problems"), 90,
              "the Data page did not refuse ../../etc/passwd")
    assert "root:" not in page.d.page_source
    page.fill("data-path", "data/train.jsonl", enter=True)
    page.click("data-inspect")
    page.wait(lambda: "24" in page.text("data-summary") and "alpaca" in page.text("data-summary"), 90,
              "Inspect did not report the 24 alpaca records: " + page.text("data-problems"))
    if SHOTS:
        page.fill("data-preview-model", "tiny-qwen2")
        page.click("data-preview")
        page.wait(lambda: "trained" in page.text("data-preview-text"), 180, "no preview")
        page.shot("data")
    page.tab("Runs")
    page.fill("runs-pick", "../../etc", enter=True)
    page.wait(lambda: "outside the workspace" in page.text("run-status"), 90, "the Runs page did not refuse ../../etc")
    page.fill("runs-pick", RUN, enter=True)


def test_run_reaches_done_with_curves_then_chat(page):
    if not (page.workspace / RUN / "ui_job.json").exists():
        pytest.skip("needs the run test_train_form_starts_a_run starts")
    page.tab("Runs")
    page.wait(lambda: page.d.find_elements("css selector", "#run-curves img"), 270, "no curve appeared")
    page.wait(lambda: "done" in page.text("run-status"), 360,
              "the run never reached done: " + page.text("run-status") + "\n" + page.value("run-log"))
    assert "seektune train" in page.value("run-log")
    if SHOTS:
        page.wait(lambda: (page.workspace / RUN2 / "summary.json").exists(), 360, "the second run did not end")
        for run in (RUN, RUN2):
            page.choose("compare-runs", run)
        assert page.tokens("compare-runs") == [RUN, RUN2]
        page.click("compare-btn")
        page.wait(lambda: page.d.find_elements("css selector", "#compare-plot img"), 90, "no compare plot")
        page.fill("runs-pick", RUN, enter=True)
        time.sleep(2)
    page.shot("runs")

    page.tab("Chat")
    if SHOTS:  # the second run was started last
        page.fill("chat-run", RUN, enter=True)
    page.wait(lambda: page.value("chat-run") == RUN, 90, "the Chat page did not select the new run")
    page.fill("chat-base", "tiny-qwen2" if SHOTS else "")  # tuned side only: the short form
    page.fill("chat-prompt", "What helps a mild headache?")
    page.unfold("chat-settings")  # a random tiny model's greedy reply is blank lines: sample instead
    page.fill("chat-temperature", "1", inner="input[type='number']")
    page.fill("chat-max-new", "16", inner="input[type='number']")
    page.click("chat-send")
    page.wait(lambda: page.text("chat-status").startswith("done"), 180, "the chat never finished: "
              + page.text("chat-status"))
    assert page.value("chat-tuned-answer").strip() or page.value("chat-tuned-reasoning").strip()
    page.shot("chat")
    if SHOTS:
        page.tab("Export")
        page.fill("export-run", RUN, enter=True)
        page.wait(lambda: page.value("export-out") == "exports/ui-e2e", 90, "the export folder was not filled in")
        page.press(lambda: page.el("#export-int8 input"), "export-int8")
        page.click("export-btn")
        page.wait(lambda: "verification" in page.text("export-result"), 360, "no export result: "
                  + page.text("export-result"))
        page.shot("export")
