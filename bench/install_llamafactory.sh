#!/usr/bin/env bash
# Install LLaMA-Factory 0.9.5 in its own virtual environment under bench/peers/ (git-ignored), as
# ../shared/peers/llamafactory-cpu.md describes: the local CPU torch, llamafactory without its
# dependencies, then only what its text SFT path needs, pinned to the versions it was released with.
# Idempotent: a second call only checks the import.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${LF_VENV:-$HERE/peers/llamafactory/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import llamafactory" 2>/dev/null; then
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q torch==2.13.0
  "$PY" -m pip install -q --no-deps llamafactory==0.9.5
  "$PY" -m pip install -q torch==2.13.0 transformers==4.57.6 peft==0.18.1 trl==0.24.0 datasets==4.0.0 \
    accelerate==1.11.0 einops fire hf-transfer matplotlib numpy omegaconf packaging pandas protobuf \
    pydantic pyyaml safetensors scipy sentencepiece tiktoken "tyro<0.9.0" gguf
  # llamafactory imports torchaudio at module level but only uses it for audio data; PyPI's
  # torchaudio does not match the local torch build, so a stand-in that refuses use is enough.
  STUB="$(dirname "$VENV")/stubs/torchaudio"
  mkdir -p "$STUB"
  cat > "$STUB/__init__.py" <<'PYEOF'
def __getattr__(name):
    raise ImportError("torchaudio is not installed in this benchmark environment (text-only peer)")
PYEOF
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$(dirname "$STUB")" > "$SITE/seektune_bench_stubs.pth"
fi
"$PY" -c "import llamafactory, transformers; print('llamafactory', llamafactory.__version__, 'transformers', transformers.__version__)"
