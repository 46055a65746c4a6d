"""Load a tokenizer as its folder's tokenizer.json says, whatever class transformers picks for it.

transformers 5's AutoTokenizer builds the class a model type is registered with (Qwen2Tokenizer for
qwen2, LlamaTokenizer for some llama folders, ...), and several of those classes rebuild the
normalizer, pre-tokenizer and decoder from their own defaults instead of using tokenizer.json as
written (huggingface/transformers#45920: DeepSeek-R1-Distill-Llama, OLMo2, Yi, ...). A DeepSeek-V3
vocabulary under a qwen2 config then gets Qwen2's split rules (digits one by one, no CJK run rule)
and an NFC normalizer: other ids than the model was trained with, and than llama.cpp or vLLM read
from the same file. `from_pretrained` compares the loaded backend with the file and, where they
differ, reloads the folder as a plain fast tokenizer (TokenizersBackend, which takes tokenizer.json
verbatim and the special tokens, chat template, padding side and model_max_length from
tokenizer_config.json).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..utils.console import log as console_log

COMPONENTS = ("normalizer", "pre_tokenizer", "decoder")
# options of the tokenizers models (BPE, WordPiece, WordLevel, Unigram) that change ids
_MODEL_OPTIONS = ("unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback",
                  "ignore_merges", "dropout", "max_input_chars_per_word")


def _component(obj) -> object:
    if obj is None:
        return None
    return json.loads(obj.__getstate__())  # the tokenizers pickle state is the component's JSON


def _parts(backend) -> dict:
    """What decides the ids, as the tokenizers library serialises it (vocabulary and merges aside)."""
    out = {k: _component(getattr(backend, k)) for k in COMPONENTS}
    model = backend.model
    out["model type"] = type(model).__name__
    for k in _MODEL_OPTIONS:
        v = getattr(model, k, None)
        out[f"model.{k}"] = None if v == "" else v  # tokenizers reads a missing prefix as None, writes ""
    return out


@functools.lru_cache(maxsize=16)
def _file_parts(path: str, mtime_ns: int, size: int) -> dict:
    from tokenizers import Tokenizer

    return _parts(Tokenizer.from_file(path))


def tokenizer_json(folder) -> Path | None:
    f = Path(folder) / "tokenizer.json"
    return f if f.is_file() else None


def differences(tok, folder) -> list[str]:
    """The parts of `tok`'s backend that differ from `folder`/tokenizer.json; [] when they agree, when
    there is no tokenizer.json, or when `tok` has no tokenizers backend (a slow or remote-code class)."""
    f = tokenizer_json(folder)
    backend = getattr(tok, "backend_tokenizer", None)
    if f is None or backend is None:
        return []
    st = f.stat()
    try:
        want = _file_parts(str(f.resolve()), st.st_mtime_ns, st.st_size)
        have = _parts(backend)
    except Exception:  # a file or component tokenizers cannot read back: nothing to compare, keep what loaded
        return []
    return [k for k in want if have[k] != want[k]]


def faithful(tok, folder, log=console_log, **kwargs):
    """`tok`, or the folder reloaded from tokenizer.json when transformers rebuilt its backend."""
    if not type(tok).__module__.startswith("transformers."):
        return tok  # remote code: its class is what the folder asked for
    diff = differences(tok, folder)
    if not diff:
        return tok
    from transformers import PreTrainedTokenizerFast  # transformers 5: an alias of TokenizersBackend

    kwargs.pop("trust_remote_code", None)
    new = PreTrainedTokenizerFast.from_pretrained(str(folder), **kwargs)
    left = differences(new, folder)
    log(f"tokenizer: transformers built {type(tok).__name__} for {folder}, whose {', '.join(diff)} differ from "
        f"its tokenizer.json (huggingface/transformers#45920); loaded tokenizer.json as written instead"
        + (f" (still differing: {', '.join(left)})" if left else ""))
    return new


def from_pretrained(path, log=console_log, **kwargs):
    """AutoTokenizer.from_pretrained(path, **kwargs), faithful to path/tokenizer.json when there is one.

    A GGUF's tokenizer (kwargs gguf_file) has no tokenizer.json to compare with and is returned as loaded.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if kwargs.get("gguf_file"):
        return tok
    return faithful(tok, path, log, **kwargs)
