"""Merged HF folder -> one GGUF file, by llama.cpp's converter in a subprocess.

A subprocess, because the converter must import its own `gguf` package (from the extracted
gguf-py, set on PYTHONPATH) rather than the PyPI `gguf` seektune imports for reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ExportError
from .tools import Converter

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter writes; k-quants: llamacpp.quantize from f16

# tokenizer.json split regexes (in order) of pre-tokenizers llama.cpp implements (src/llama-vocab.cpp)
_QWEN2 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
          "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",)
_LLAMA3 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
           "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",)
_DEEPSEEK3 = ("\\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
              "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
              "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
# llama.cpp pre-tokenizer names -> the split regexes they apply (names sharing one rule set listed together)
PRE_RULES: dict[str, tuple[str, ...]] = {
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "stablelm2": _QWEN2,
    "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
    "deepseek-v3": _DEEPSEEK3, "joyai-llm": _DEEPSEEK3, "hunyuan-dense": _DEEPSEEK3,
}
FALLBACK_NAME = {_QWEN2: "qwen2", _LLAMA3: "llama-bpe", _DEEPSEEK3: "deepseek-v3"}


def split_regexes(model_dir: Path) -> tuple[str, ...] | None:
    """The Split regexes of tokenizer.json's pre_tokenizer, or None without a tokenizer.json."""
    f = Path(model_dir) / "tokenizer.json"
    if not f.exists():
        return None
    pre = json.loads(f.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return tuple(s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {}))


def convert(conv: Converter, model_dir: Path, outfile: Path, outtype: str, timeout: int = 3600) -> dict:
    """Run the converter; return {"seconds", "log_tail", "pre_fallback"}; ExportError with its log on failure."""
    if outtype not in OUTTYPES:
        raise ExportError(f"llama.cpp's converter writes {', '.join(OUTTYPES)}; got {outtype!r}")
    fallback = FALLBACK_NAME.get(split_regexes(model_dir) or (), "-")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(conv.gguf_py), str(conv.root)]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_LOCAL_GGUF": "1"}
    cmd = [sys.executable, str(Path(__file__).with_name("_run_converter.py")), str(conv.root), fallback, "--",
           str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode != 0 or not outfile.exists():
        raise ExportError(f"llama.cpp's converter failed on {model_dir} (exit {proc.returncode}):\n{tail}")
    return {"seconds": round(time.time() - t0, 2), "log_tail": tail[-1500:],
            "pre_fallback": fallback if "seektune: unlisted tokenizer hash" in tail else None}
