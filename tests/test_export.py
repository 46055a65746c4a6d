"""Export: merged weights reproduce the adapter model, load with plain transformers; INT8 loads and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from deploy_fixtures import make_lora_run
from deploy_fixtures import one_torch_thread  # noqa: F401  (autouse)
from seektune.export.merge import export_run, prompt_logits, verify_prompts
from seektune.export.source import ExportError, load_causal_lm, load_tokenizer_for, resolve_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return make_lora_run(tmp_path_factory.mktemp("runs") / "qwen-lora", "tiny-qwen2")


@pytest.fixture(scope="module")
def adapter_and_base_logits(lora_run):
    src = resolve_source(lora_run)
    model, tok = load_causal_lm(src)
    prompts = verify_prompts(tok, src.template)
    with_adapter = prompt_logits(model, tok, prompts)
    with model.disable_adapter():
        base = prompt_logits(model, tok, prompts)
    return prompts, with_adapter, base


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    """One fp32 merge export with its INT8 variant in exported/int8 (shared: exports cost seconds)."""
    out = tmp_path_factory.mktemp("exports") / "merged"
    return out, export_run(lora_run, out, "fp32", quantize="int8")


def test_merged_export_equals_adapter_model_in_plain_transformers(exported, adapter_and_base_logits, tmp_path):
    prompts, ref, base = adapter_and_base_logits
    # the adapter must matter, or equality below would prove nothing
    assert max(float((a - b).abs().max()) for a, b in zip(ref, base)) > 1e-2
    out, res = exported
    assert res.verification["passed"] and res.verification["max_abs_diff"] < 1e-4
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["mode"] == "merged" and manifest["verification"]["top1_agreement"] == 1.0
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    # a clean interpreter without seektune on the path loads it with transformers alone; the tokenizer as
    # PreTrainedTokenizerFast, which reads tokenizer.json as written (AutoTokenizer builds Qwen2Tokenizer for this
    # qwen2 config and gives the DeepSeek vocabulary Qwen2's split rules: huggingface/transformers#45920)
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); t = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])\n"
        "assert 'seektune' not in sys.modules and t.chat_template\n"
        "out = []\n"
        "for p in json.loads(sys.argv[2]):\n"
        "    with torch.no_grad(): out.append(m(**t(p, add_special_tokens=False, return_tensors='pt')).logits[0].tolist())\n"
        "print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(prompts)], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [torch.tensor(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def test_deepseek_v3_merge_with_expert_lora_reproduces_logits(tmp_path):
    run = make_lora_run(tmp_path / "ds-lora", "tiny-deepseek-v3")
    adapter_cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter_cfg.get("target_parameters"), "the fixture should adapt fused experts too"
    res = export_run(run, tmp_path / "ds-merged", "fp32")
    assert res.verification["passed"], res.verification


def test_adapter_only_export_in_fp16_loads_with_peft(lora_run, adapter_and_base_logits, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    prompts, ref, _ = adapter_and_base_logits
    out = tmp_path / "adapter"
    export_run(lora_run, out, "fp16", adapter_only=True)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    src = resolve_source(lora_run)
    base = AutoModelForCausalLM.from_pretrained(src.base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    from transformers import AutoTokenizer

    got = prompt_logits(model, AutoTokenizer.from_pretrained(str(out)), prompts)
    scale = max(float(a.abs().max()) for a in ref)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, got)) < 0.02 * max(1.0, scale)


_PLAIN_LOAD = (  # a clean interpreter: transformers + compressed-tensors, never seektune
    "import sys, json, torch\n"
    "from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast\n"
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); t = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])\n"
    "assert 'seektune' not in sys.modules\n"
    "out = []\n"
    "for p in json.loads(sys.argv[2]):\n"
    "    with torch.no_grad(): out.append(m(**t(p, add_special_tokens=False, return_tensors='pt')).logits[0].tolist())\n"
    "print(json.dumps(out))\n")


def _plain_transformers_logits(folder, prompts, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PLAIN_LOAD, str(folder), json.dumps(prompts)], capture_output=True,
                          text=True, env=env, cwd=str(cwd), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [torch.tensor(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


def _int8_on_disk(folder):
    """(packed int Linear weights, float tensors named like a Linear weight) in the folder's safetensors."""
    from safetensors import safe_open

    packed, float_linear = {}, []
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                dt = st.get_slice(k).get_dtype()
                if k.endswith(".weight_packed"):
                    packed[k] = dt
                elif k.endswith(("proj.weight",)) and dt in ("F32", "F16", "BF16"):
                    float_linear.append(k)
    return packed, float_linear


def test_int8_export_is_compressed_tensors_that_plain_transformers_loads(exported, adapter_and_base_logits, tmp_path):
    from seektune.export.quantize import Int8WeightOnlyLinear, load_quantized

    prompts, ref, base = adapter_and_base_logits
    out, res = exported
    q = out / "int8"
    cfg = json.loads((q / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    assert cfg["quantization_config"]["format"] == "pack-quantized"
    packed, float_linear = _int8_on_disk(q)
    assert packed and set(packed.values()) == {"I32"} and float_linear == [], (packed, float_linear)
    manifest = json.loads((q / "seektune_quant.json").read_text())
    assert manifest["int8_params"] > 0 and "embeddings / lm_head" in manifest["float_params"]
    # plain transformers (no seektune) runs it, and it computes what the adapter model does
    got = _plain_transformers_logits(q, prompts, tmp_path)
    scale = max(float(a.abs().max()) for a in ref)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    moved = max(float((a - b).abs().max()) for a, b in zip(ref, base))
    cos = torch.nn.functional.cosine_similarity(torch.cat(ref).flatten(), torch.cat(got).flatten(), dim=0)
    assert cos > 0.99 and diff < 0.2 * moved, (float(cos), diff, moved, scale)  # measured: 0.085 vs 1.45
    # seektune's loader keeps the weights int8 in memory and computes the same numbers
    model = load_quantized(q, device="cpu")
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8WeightOnlyLinear)
    assert model.model.layers[0].self_attn.q_proj.qweight.dtype == torch.int8
    mine = prompt_logits(model, load_tokenizer_for(resolve_source(q)), prompts)
    assert max(float((a - b).abs().max()) for a, b in zip(mine, got)) < 1e-3
    assert resolve_source(q).kind == "int8" and res.verification["quantized"]["max_abs_diff"] < 0.3 * moved


def test_int8_quantises_fused_moe_experts_and_plain_transformers_loads_them(tmp_path):
    """DeepSeek-V3's experts are fused 3D parameters in transformers 5: the export writes them per expert
    as compressed-tensors int8 (llm-compressor's MoE layout) and transformers fuses them again on load."""
    import re

    from transformers import AutoModelForCausalLM

    run = make_lora_run(tmp_path / "ds-lora", "tiny-deepseek-v3")
    res = export_run(run, tmp_path / "ds", "fp32", quantize="int8")
    merged, q = tmp_path / "ds", tmp_path / "ds" / "int8"
    packed, float_linear = _int8_on_disk(q)
    experts = [k for k in packed if re.search(r"\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight_packed$", k)]
    assert len(experts) == 2 * 8 * 3 and set(packed.values()) == {"I32"} and float_linear == [], float_linear
    manifest = json.loads((q / "seektune_quant.json").read_text())
    assert manifest["int8_expert_params"] > 0 and not any("experts" in g for g in manifest["float_params"])
    # what transformers rebuilds are the int8 values, experts (fused again) and MLA projections alike: within
    # half a quantisation step of the float weights (one scale per output channel), and not equal to them
    ref_model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    got_model = AutoModelForCausalLM.from_pretrained(str(q), dtype=torch.float32)
    src = resolve_source(merged)
    tok = load_tokenizer_for(src)
    with torch.no_grad():
        got_model(**tok("hi", return_tensors="pt"))  # compressed-tensors decompresses the Linear weights here
    for get in (lambda m: m.model.layers[1].mlp.experts.gate_up_proj, lambda m: m.model.layers[2].mlp.experts.down_proj,
                lambda m: m.model.layers[0].self_attn.q_a_proj.weight):
        a, b = get(ref_model).detach(), get(got_model).detach()
        step = a.abs().amax(dim=-1, keepdim=True) / 127
        assert float((a - b).abs().max()) > 0 and bool(((a - b).abs() <= 0.51 * step + 1e-7).all())
    # a clean interpreter runs exactly that model. Against the merged model the logits move more than for the
    # dense Qwen2 (cosine 0.92-0.98 over LoRA seeds): int8 noise flips the top-2 routing of this random tiny
    # MoE on some tokens
    from transformers import PreTrainedTokenizerFast

    prompts = verify_prompts(tok, src.template)
    got = _plain_transformers_logits(q, prompts, tmp_path)
    fast = PreTrainedTokenizerFast.from_pretrained(str(q))
    with torch.no_grad():
        here = [got_model(**fast(p, add_special_tokens=False, return_tensors="pt")).logits[0] for p in prompts]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(here, got))
    ref = _plain_transformers_logits(merged, prompts, tmp_path)
    cos = torch.nn.functional.cosine_similarity(torch.cat(ref).flatten(), torch.cat(got).flatten(), dim=0)
    assert cos > 0.85, float(cos)


def test_export_refuses_to_overwrite_and_names_the_folder(lora_run, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="busy"):
        export_run(lora_run, out)
    with pytest.raises(ExportError, match="--dtype"):
        export_run(lora_run, tmp_path / "o2", dtype="int4")
