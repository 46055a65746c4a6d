"""One module per tab of the UI: data, train, runs, chat, export. Each has `build(ctx)` and returns the
components other pages wire to."""
