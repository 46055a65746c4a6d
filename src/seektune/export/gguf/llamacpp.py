"""llama.cpp itself, through llama-cpp-python (`make llama-cpp` builds it from the pinned sdist).

What Ollama and LM Studio run is llama.cpp, so where it is installed the export checks the GGUF with
it: llama.cpp's own tokenizer, logits at every prompt position, greedy answers and perplexity. It is
also the only reader of DeepSeek's `deepseek2` GGUFs (transformers cannot load them) and the only
writer of k-quants (q4_k_m, ...), through `llama_model_quantize`. Without it those checks fall back
to transformers' GGUF loader (llama, qwen2) or are skipped with a reason naming the command.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PIN = "0.3.36"  # the version whose sdist also gives the converter (tools.py)
INSTALL = "make llama-cpp (builds llama-cpp-python==%s from source, about 4 min on 2 cores)" % PIN
# --quant names -> llama.cpp ftypes written by its quantizer from an f16 GGUF
KQUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
           "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
           "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
           "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def missing() -> str | None:
    """None when llama-cpp-python imports, else why not (with the command that installs it)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an ImportError or a shared library that fails to load
        return f"llama-cpp-python is not installed ({type(e).__name__}: {e}); {INSTALL}"
    return None


def _threads() -> int:
    return max(1, int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1))


class Runner:
    """One GGUF loaded in llama.cpp, scoring token sequences with logits at every position."""

    def __init__(self, path: str | Path, n_ctx: int = 2048):
        from llama_cpp import Llama

        self.path = Path(path)
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), logits_all=True,
                         verbose=False, n_threads=_threads(), seed=0)
        self.n_ctx = n_ctx

    @property
    def add_bos(self) -> bool:
        return str(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"

    def token_ids(self, text: str) -> list[int]:
        """llama.cpp's tokenizer, special tokens parsed as Ollama's templates feed them, no BOS added."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) fp32 logits, the sequence evaluated from an empty cache."""
        ids = list(ids)[: self.n_ctx]
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(list(ids))
        out: list[int] = []
        for _ in range(n):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(nxt)
            if nxt == self.llm.token_eos():
                break
            self.llm.eval([nxt])
        return out

    def nll(self, ids: list[int]) -> tuple[float, int]:
        """(summed negative log-likelihood, tokens scored) of ids[1:] given their prefixes."""
        ids = list(ids)[: self.n_ctx]
        if len(ids) < 2:
            return 0.0, 0
        lg = self.logits(ids)[:-1].astype(np.float64)
        m = lg.max(-1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(lg - m).sum(-1)))
        target = np.asarray(ids[1:])
        return float((logz - lg[np.arange(len(target)), target]).sum()), len(target)

    def close(self) -> None:
        self.llm.close()


def perplexity(path: str | Path, sequences: list[list[int]], n_ctx: int = 1024) -> dict:
    """Token-level perplexity of the GGUF on the given token sequences (the same ids for every variant)."""
    r = Runner(path, n_ctx=n_ctx)
    try:
        t0 = time.time()
        total, count = 0.0, 0
        for ids in sequences:
            s, n = r.nll(ids)
            total, count = total + s, count + n
    finally:
        r.close()
    return {"ppl": float(np.exp(total / max(count, 1))), "tokens": count, "seconds": round(time.time() - t0, 2)}


@contextmanager
def _native_output_to(path: Path):
    """The C library prints a line per tensor to fds 1 and 2: send them to `path` for the call."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "wb") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize(src: Path, dst: Path, quant: str) -> dict:
    """llama.cpp's quantizer (what `llama-quantize SRC DST Q4_K_M` runs), its log in DST.log;
    returns seconds and how many tensors needed a fallback type (rows not a multiple of 256)."""
    import llama_cpp

    if quant not in KQUANTS:
        raise ValueError(f"llama.cpp quantizer types here: {', '.join(KQUANTS)} (got {quant!r})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, KQUANTS[quant])
    params.nthread = _threads()
    logf = Path(str(dst) + ".log")
    t0 = time.time()
    with _native_output_to(logf):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    text = logf.read_text(encoding="utf-8", errors="replace")
    if rc != 0 or not Path(dst).exists():
        raise RuntimeError(f"llama.cpp's quantizer failed on {src} -> {quant} (return code {rc}):\n{text[-3000:]}")
    fb = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", text)
    return {"seconds": round(time.time() - t0, 2), "log": logf.name,
            "fallback_tensors": f"{fb.group(1)} of {fb.group(2)}" if fb else "0"}
