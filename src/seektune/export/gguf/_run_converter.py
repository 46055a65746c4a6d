"""Run llama.cpp's convert_hf_to_gguf.py, in a subprocess, with one seektune fallback.

Invoked as a script (it imports nothing from seektune): `python _run_converter.py CONVERTER_DIR
PRE_FALLBACK -- converter args`. llama.cpp names the BPE pre-tokenizer by hashing the tokenizer's
output on a probe text and refuses tokenizers whose hash it does not list, although it implements
their split rules; under a qwen2 config transformers 5 rebuilds a DeepSeek vocabulary with Qwen2's split
regex (huggingface/transformers#45920), and the converter hashes that rebuilt tokenizer's output, for one.
When the hash is unknown and seektune matched the tokenizer.json split regexes to a pre-tokenizer
llama.cpp implements (PRE_FALLBACK, '-' for none), that name is used instead of failing.
"""

import runpy
import sys
from pathlib import Path


def main() -> None:
    root, fallback = Path(sys.argv[1]), sys.argv[2]
    args = sys.argv[sys.argv.index("--") + 1:]
    sys.path.insert(0, str(root / "gguf-py"))
    sys.path.insert(0, str(root))
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if fallback == "-":
                raise
            base.logger.warning(f"seektune: unlisted tokenizer hash; its split regexes are llama.cpp's {fallback!r}")
            return fallback

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(root / "convert_hf_to_gguf.py"), *args]
    runpy.run_path(str(root / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main()
