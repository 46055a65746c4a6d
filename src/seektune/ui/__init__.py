"""`seektune ui`: a local web UI (Gradio) over the same data tools, runs and exports as the CLI.

Layer 7 (beside export/serve/tune): it reads config, data and eval, launches ordinary `seektune train`
subprocesses and calls the export functions; it never imports the CLI. The modules:

    access      who may connect: localhost by default, auth required for any other bind address
    workspace   the one folder the UI may read and write; every user-typed path goes through it
    form        the Train form generated from the typed config schema, and back to a validated YAML
    jobs        start/stop/resume a run as a `seektune train` subprocess (survives a UI restart)
    runs        what a run folder says: status, metrics, log tail, warnings, report
    curves      matplotlib figures of metrics.jsonl series (live curves, runs compared)
    chat        base vs tuned replies, streamed, reasoning kept apart
    app         the Blocks with one tab per page (pages/), and launching it
"""
