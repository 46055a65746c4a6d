"""GGUF + Ollama export: llama.cpp's converter output agrees with the merged model; the Modelfile's
Go template renders what the HF chat template renders. The conversion tests skip, naming
`make gguf-tools`, when the converter is not installed."""

from __future__ import annotations

import json
import os

import pytest
import torch

from deploy_fixtures import make_lora_run
from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.data.templates import BUILTIN
from seektune.export.errors import ExportError
from seektune.export.gguf import llamacpp, tools
from seektune.export.gguf.gotemplate import GoTemplateError, render
from seektune.export.gguf.modelfile import (PROBE_CONVERSATIONS, REASONING_CONVERSATION, build_modelfile,
                                           parse_template, render_ollama)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    tools.locate()
    NO_CONVERTER = None
except tools.ToolsMissing as e:
    NO_CONVERTER = str(e)
# the f16 Llama conversion is the short form in `make test`; q8_0 Qwen2 and DeepSeek-V3 (~100 s) are long
long_only = pytest.mark.skipif(os.environ.get("SEEKTUNE_LONG") != "1",
                               reason="long form only (SEEKTUNE_LONG=1); the short form is test_tiny_llama_lora_run_to_f16_...")
needs_converter = pytest.mark.skipif(NO_CONVERTER is not None, reason=f"{NO_CONVERTER}")
NO_LLAMA_CPP = llamacpp.missing()
needs_llama_cpp = pytest.mark.skipif(NO_LLAMA_CPP is not None, reason=f"{NO_LLAMA_CPP}")

SMOLLM2_TEMPLATE = (  # SmolLM2-Instruct's own chat template: ChatML with a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def ds_tok():
    from seektune.models.presets import load_deepseek_tokenizer

    return load_deepseek_tokenizer()


# --- Modelfile template (no converter needed) -------------------------------------------------

@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-r1", "chatml", "smollm2"])
def test_modelfile_template_renders_like_the_hf_template(ds_tok, name):
    ds_tok.chat_template = SMOLLM2_TEMPLATE if name == "smollm2" else BUILTIN[name].jinja
    mf = build_modelfile(ds_tok, "tokenizer" if name == "smollm2" else name, "m.gguf", 4096, False, ds_tok.eos_token)
    assert mf.template_name == ("chatml+default-system" if name == "smollm2" else name), mf.notes
    go = parse_template(mf.text)
    convs = PROBE_CONVERSATIONS + ([] if name == "smollm2" else [REASONING_CONVERSATION])
    for conv in convs:
        assert render_ollama(go, conv) == ds_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert "PARAMETER num_ctx 4096" in mf.text and f'PARAMETER stop "{ds_tok.eos_token}"' in mf.text


def test_r1_modelfile_keeps_the_think_opening_hand_checked(ds_tok):
    """Independent of the renderer: the expected text is written out by hand from DeepSeek-R1's format."""
    ds_tok.chat_template = BUILTIN["deepseek-r1"].jinja
    go = parse_template(build_modelfile(ds_tok, "deepseek-r1", "m.gguf", 2048, False, ds_tok.eos_token).text)
    want = ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>2+2?<｜Assistant｜><think>\nAdd.\n</think>\n\n4."
            "<｜end▁of▁sentence｜><｜User｜>And 3+3?<｜Assistant｜><think>\n")
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4.", "reasoning_content": "Add."}, {"role": "user", "content": "And 3+3?"}]
    assert render_ollama(go, conv) == want
    assert ds_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == want


def test_go_renderer_subset_and_refusals():
    data = {"Messages": [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}]}
    t = ('{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}{{ $m.Role }}={{ .Content }}'
         '{{ if not $last }};{{ else if eq .Role "assistant" }}.{{ end }}{{ end }}')
    assert render(t, data) == "user=a;assistant=b."
    assert render('x  {{- "y" -}}  z', {}) == "xyz"
    with pytest.raises(GoTemplateError):
        render("{{ printf \"%d\" 1 }}", {})


def test_a_template_without_a_go_form_gets_no_template_line(ds_tok):
    ds_tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    mf = build_modelfile(ds_tok, "tokenizer", "m.gguf", 2048, False, ds_tok.eos_token)
    assert mf.template_name is None and parse_template(mf.text) is None and "ollama show" in mf.notes[-1]


# --- options and install step (no converter needed) --------------------------------------------

def test_quant_needs_format_gguf_and_q4_k_m_names_the_quantizer(tmp_path):
    from seektune.config import ConfigError
    from seektune.export.deploy_cli import deploy_settings
    from seektune.export.gguf.pipeline import export_gguf

    with pytest.raises(ConfigError, match="--format gguf"):
        deploy_settings("tiny-qwen2", None, gguf_quant="q8_0")
    assert deploy_settings("tiny-qwen2", None, export_format="gguf", gguf_quant="q8_0").gguf_quant == "q8_0"
    with pytest.raises(ExportError, match="must be one of"):
        export_gguf("tiny-qwen2", tmp_path / "o", "q9_z")


def test_k_quants_without_llama_cpp_name_the_build_step(tmp_path, monkeypatch):
    from seektune.export.gguf.pipeline import export_gguf

    monkeypatch.setattr(llamacpp, "missing", lambda: "llama-cpp-python is not installed; " + llamacpp.INSTALL)
    with pytest.raises(ExportError, match="make llama-cpp"):
        export_gguf("tiny-qwen2", tmp_path / "o", "q4_k_m")
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_missing_tools_name_the_install_step(tmp_path, monkeypatch):
    monkeypatch.setenv(tools.ENV_DIR, str(tmp_path / "none"))
    with pytest.raises(tools.ToolsMissing, match="make gguf-tools"):
        tools.locate()
    from seektune.export.gguf.pipeline import export_gguf

    with pytest.raises(ExportError, match="make gguf-tools"):
        export_gguf("tiny-qwen2", tmp_path / "o", "f16")


def test_install_refuses_an_sdist_with_another_sha256(tmp_path):
    import tarfile

    fake = tmp_path / tools.SDIST_NAME
    with tarfile.open(fake, "w:gz") as t:
        f = tmp_path / "convert_hf_to_gguf.py"
        f.write_text("print('not llama.cpp')")
        t.add(f, arcname=tools._VENDOR + "convert_hf_to_gguf.py")
    with pytest.raises(tools.ToolsMissing, match="sha256"):
        tools.install(tmp_path / "dest", fake)
    assert not (tmp_path / "dest").exists()


# --- conversions (need the converter) ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama_run(tmp_path_factory):
    """A 2-layer Llama with SmolLM2's real tokenizer (49k vocab, its own ChatML template) and a random LoRA."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from seektune.models.presets import resolve_model_path

    smol = resolve_model_path("smollm2-135m-instruct", log=lambda *_: None)
    base = tmp_path_factory.mktemp("base") / "tiny-llama"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    return make_lora_run(tmp_path_factory.mktemp("runs") / "llama-lora", str(base))


def _report(out):
    return json.loads((out / "gguf_verify.json").read_text())


@needs_converter
@pytest.mark.slow
def test_tiny_llama_lora_run_to_f16_gguf_agrees_and_gets_a_modelfile(tiny_llama_run, tmp_path):
    from transformers import AutoTokenizer

    from seektune.export.gguf.pipeline import export_gguf

    out = tmp_path / "gguf"
    rep = export_gguf(tiny_llama_run, out, "f16")
    chk = rep["check"]
    assert rep["passed"] and chk["architecture"] == "llama" and chk["pre_ok"] is not False, chk
    assert chk["decisive_flips"] == 0 and chk["logits"]["top1_agreement"] >= 0.95
    assert chk["logits"]["max_abs_diff"] < 2e-2 * max(1, chk["logits"]["max_abs_logit"])
    assert chk["greedy_same"] == chk["greedy_prompts"] == 3 and chk["token_ids_same"]
    assert (out / rep["gguf"]).exists() and rep["hf_export"]["passed"]
    mf = (out / "Modelfile").read_text()
    assert f"FROM ./{rep['gguf']}" in mf and rep["modelfile"]["template"] == "chatml+default-system"
    tok = AutoTokenizer.from_pretrained(str(out / "hf"))
    go = parse_template(mf)
    for conv in PROBE_CONVERSATIONS:
        assert render_ollama(go, conv) == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    # the check can fail: the same GGUF against a model whose output layer moved
    from transformers import AutoModelForCausalLM

    from seektune.export.gguf.check import check_gguf
    from seektune.export.merge import verify_prompts

    moved = AutoModelForCausalLM.from_pretrained(str(out / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        moved.model.norm.weight.mul_(3.0)
    bad = check_gguf(out / rep["gguf"], "f16", moved, tok, verify_prompts(tok, "auto"), out / "hf")
    assert not bad.passed and not bad.logits["passed"] and bad.engine == chk["engine"]


@needs_converter
@needs_llama_cpp
@pytest.mark.slow
def test_cli_q4_k_m_is_written_by_llama_cpp_with_an_f16_reference_and_a_perplexity_table(tiny_llama_run, tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}: what helps a sore throat?",
                                        "output": f"Rest, fluids and warm drinks; see a doctor if it lasts {i} days."})
                            + "\n" for i in range(6)), encoding="utf-8")
    out = tmp_path / "q4"
    res = CliRunner().invoke(app, ["export", str(tiny_llama_run), "--out", str(out), "--format", "gguf",
                                   "--quant", "q4_k_m", "--data", str(data)])
    assert res.exit_code == 0, res.output
    rep = _report(out)
    assert rep["quant"] == "q4_k_m" and (out / rep["gguf"]).exists() and (out / rep["f16_reference"]).exists()
    assert (out / rep["quantize"]["log"]).exists()
    assert rep["size_bytes"] < (out / rep["f16_reference"]).stat().st_size
    types = rep["check"]["tensor_types"]
    assert any(t.startswith("Q") for t in types) and rep["check"]["engine"].startswith("llama.cpp"), types
    rows = rep["perplexity"]["rows"]
    assert [r["variant"].split()[1] for r in rows[1:]] == ["f16", "q4_k_m"] and rep["perplexity"]["texts"] == 6
    hf_ppl, f16_ppl, q_ppl = (r["ppl"] for r in rows)
    assert abs(f16_ppl / hf_ppl - 1) < 0.01 and q_ppl > 0  # llama.cpp's f16 scores the text as transformers' fp32 does
    assert "perplexity" in res.output and "q4_k_m" in res.output


@needs_converter
@pytest.mark.slow
@long_only
def test_tiny_qwen2_lora_run_to_q8_0_gguf_tracks_the_merged_model(tmp_path):
    from seektune.export.gguf.pipeline import export_gguf

    run = make_lora_run(tmp_path / "qwen-lora", "tiny-qwen2")
    rep = export_gguf(run, tmp_path / "gguf", "q8_0")
    chk = rep["check"]
    assert chk["architecture"] == "qwen2" and chk["tensor_types"].get("Q8_0", 0) > 0
    # tokenizer.json keeps DeepSeek-V3's split rules (the export no longer saves transformers' rebuilt
    # Qwen2Tokenizer, transformers#45920); the converter hashes the rebuilt one, unlisted, so the fallback names them
    assert chk["pre"] == "deepseek-v3" and chk["pre_ok"] and rep["pre_fallback"] == "deepseek-v3"
    # looser than f16: the random LoRA leaves near-uniform logits (max |logit| ~0.8 over 129k tokens), so Q8_0
    # rounding flips some near-ties (measured: max diff 0.198, top-1 88%); rounding warns, it does not fail
    lg = chk["logits"]
    assert lg["top1_agreement"] >= 0.8 and lg["max_abs_diff"] < 0.3 * max(1, lg["max_abs_logit"]), lg
    assert rep["passed"] and chk["token_ids_same"] and rep["modelfile"]["template"] == "deepseek-r1"


@needs_converter
@pytest.mark.slow
def test_tiny_deepseek_v3_converts_to_deepseek2_with_mla_and_moe_tensors(tmp_path):
    from gguf import GGUFReader

    from seektune.export.gguf.pipeline import export_gguf

    rep = export_gguf("tiny-deepseek-v3", tmp_path / "gguf", "f16")
    chk = rep["check"]
    assert chk["architecture"] == "deepseek2"
    if NO_LLAMA_CPP:  # transformers cannot load deepseek2 GGUFs: the logits check needs llama.cpp
        assert "make llama-cpp" in chk["skipped"] and chk["logits"] is None
    else:  # MLA + MoE computed by llama.cpp agree with the merged model (measured: 0.0092 of 0.02)
        assert rep["passed"] and chk["logits"]["passed"] and chk["decisive_flips"] == 0 and chk["token_ids_same"], chk
        assert chk["engine"].startswith("llama.cpp")
    assert chk["pre"] == "joyai-llm" and chk["pre_ok"]  # the hash names JoyAI; llama.cpp splits it as deepseek-v3
    names = {t.name for t in GGUFReader(str(tmp_path / "gguf" / rep["gguf"])).tensors}
    attn = ["attn_norm", "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b",
            "attn_v_b", "attn_output", "ffn_norm"]
    dense = ["ffn_gate", "ffn_up", "ffn_down"]
    moe = ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp",
           "ffn_down_shexp"]
    want = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for b in range(3):  # first_k_dense_replace=1: layer 0 dense, layers 1-2 MoE (8 routed + 1 shared)
        want |= {f"blk.{b}.{n}.weight" for n in attn + (dense if b == 0 else moe)}
        if b:
            want.add(f"blk.{b}.exp_probs_b.bias")
    assert names == want and chk["tensors"] == len(want) == 52
    assert rep["modelfile"]["template"] == "deepseek-r1"
