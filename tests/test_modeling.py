"""modeling.py: model kind, processor pixel budget, model loading errors, LoRA targets."""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import pytest

from connectodistill.core.errors import UserError
from connectodistill.core.families import FAMILIES, kinds
from connectodistill.core.modeling import (
    add_lora,
    load_model,
    load_processor,
    lora_target_modules,
    model_kind,
    visual_token_factor,
)

KINDS = kinds()  # every family of the table (core/families.py)
VIEW = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    from connectodistill.synthetic import make_tiny_student

    root = tmp_path_factory.mktemp("modeling_students")
    return {kind: make_tiny_student(root / kind, kind=kind) for kind in KINDS}


def _image(size=64):
    from PIL import Image

    return Image.new("RGB", (size, size), (200, 120, 40))


def _n_image_tokens(processor, size=64) -> int:
    batch = processor(text=[VIEW], images=[_image(size)], return_tensors="pt")
    return int((batch["input_ids"] == processor.image_token_id).sum())


# --------------------------------------------------------------------------- kind


@pytest.mark.parametrize("kind", KINDS)
def test_model_kind_from_config_and_model(students, kind):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(students[kind])
    assert model_kind(config) == kind
    assert model_kind(SimpleNamespace(config=config)) == kind
    assert visual_token_factor(kind) == (32 if kind in ("qwen3-vl", "qwen3.5") else 28)
    ip = load_processor(students[kind])[0].image_processor
    assert ip.patch_size * ip.merge_size == visual_token_factor(kind)


def test_model_kind_unknown_is_a_user_error():
    with pytest.raises(UserError, match="llama") as e:
        model_kind(SimpleNamespace(model_type="llama"))
    # one line that lists every family of the table
    assert "\n" not in str(e.value) and all(f"{f.kind} ({f.model_type}" in str(e.value) for f in FAMILIES)
    with pytest.raises(UserError):
        visual_token_factor("llava")


def test_an_unsupported_model_folder_fails_before_loading(students, tmp_path):
    """A model type outside the table fails on its config.json, before weights or processor."""
    import shutil

    from transformers import Gemma4Config

    folder = tmp_path / "gemma4"
    shutil.copytree(students["qwen3-vl"], folder)
    (folder / "config.json").unlink()
    Gemma4Config().save_pretrained(folder)
    for load in (load_model, load_processor):
        with pytest.raises(UserError, match="unsupported model type 'gemma4'") as e:
            load(folder)
        assert "\n" not in str(e.value) and "qwen3.5 (qwen3_5" in str(e.value)


# --------------------------------------------------------------------------- processor


@pytest.mark.parametrize("kind", KINDS)
def test_load_processor_keeps_a_tiny_students_budget(students, kind):
    from transformers import AutoProcessor

    processor, budget = load_processor(students[kind])
    own = AutoProcessor.from_pretrained(students[kind]).image_processor.size
    assert budget == {"min_pixels": own["shortest_edge"], "max_pixels": own["longest_edge"]}
    if kind == "qwen3-vl":
        assert budget == {"min_pixels": 4096, "max_pixels": 4096}
    assert _n_image_tokens(processor) == 4
    assert _n_image_tokens(processor, 300) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_load_processor_overrides_change_the_token_count(students, kind):
    f = visual_token_factor(kind)
    own_min = load_processor(students[kind])[1]["min_pixels"]
    # bounds a little off the exact squares: smart_resize floors/ceils in floating point
    processor, budget = load_processor(students[kind], max_pixels=(4 * f + f // 4) ** 2)
    assert budget == {"min_pixels": own_min, "max_pixels": (4 * f + f // 4) ** 2}
    assert _n_image_tokens(processor, 64) == 4  # small view: kept near its own size
    assert _n_image_tokens(processor, 400) == 16  # large view: capped at max_pixels

    band = {"min_pixels": (3 * f - f // 4) ** 2, "max_pixels": (3 * f + f // 4) ** 2}
    processor, budget = load_processor(students[kind], **band)
    assert budget == band
    assert _n_image_tokens(processor, 64) == 9  # enlarged up to min_pixels
    # a min above the processor's own max is fine when max is raised with it; min is clipped
    # to max when only max is lowered
    processor, budget = load_processor(students[kind], max_pixels=f * f)
    assert budget == {"min_pixels": f * f, "max_pixels": f * f}
    assert _n_image_tokens(processor, 64) == 1


def test_load_processor_budget_survives_save(students, tmp_path):
    from transformers import AutoProcessor

    f = visual_token_factor("qwen3-vl")
    processor, budget = load_processor(students["qwen3-vl"], min_pixels=(3 * f - 8) ** 2,
                                       max_pixels=(3 * f + 8) ** 2)
    processor.save_pretrained(tmp_path)
    again, budget2 = load_processor(tmp_path)
    assert budget2 == budget
    assert _n_image_tokens(again) == 9
    assert _n_image_tokens(AutoProcessor.from_pretrained(tmp_path)) == 9


def test_load_processor_bad_budget(students):
    with pytest.raises(UserError, match="min_pixels") as e:
        load_processor(students["qwen3-vl"], min_pixels=100_000, max_pixels=10_000)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError):
        load_processor(students["qwen3-vl"], max_pixels=0)


def test_load_processor_default_cap_for_a_big_processor(students, tmp_path):
    """A processor allowing 16M pixels (like real Qwen3-VL) is capped at 1024x1024."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(students["qwen3-vl"])
    processor.image_processor.size = {"shortest_edge": 65536, "longest_edge": 16777216}
    processor.save_pretrained(tmp_path)
    processor, budget = load_processor(tmp_path)
    assert budget == {"min_pixels": 65536, "max_pixels": 1024 * 1024}
    assert _n_image_tokens(processor, 2048) == 1024


# --------------------------------------------------------------------------- model


def test_load_model_defaults_to_float32_on_cpu(students):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU default")
    model = load_model(students["qwen3-vl"])
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert load_model(str(students["qwen3-vl"]), dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "~/no-such-model",
                                  "a/b/c", "no-such-dir/"])
def test_load_model_missing_local_path(name):
    with pytest.raises(UserError, match="not found") as e:
        load_model(name)
    assert "\n" not in str(e.value)


def test_load_model_file_instead_of_folder(students):
    with pytest.raises(UserError, match="config.json"):
        load_model(students["qwen3-vl"] / "config.json")


def test_load_model_folder_without_a_model(tmp_path):
    with pytest.raises(UserError, match="could not load") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_load_in_4bit_on_cpu_is_a_user_error(students):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(UserError, match="CUDA GPU") as e:
        load_model(students["qwen3-vl"], load_in_4bit=True)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="would wait for the network")
def test_unreachable_hub_id_is_a_one_line_user_error():
    with pytest.raises(UserError, match="Hugging Face Hub") as e:
        load_model("no-such-org/no-such-model-xyz")
    assert "\n" not in str(e.value)
    assert "local folder" in str(e.value)
    with pytest.raises(UserError, match="Hugging Face Hub"):
        load_processor("no-such-org/no-such-model-xyz")


# --------------------------------------------------------------------------- LoRA


def _adapted(peft_model) -> list[str]:
    return [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]


def _language_linears(model) -> int:
    """Linear layers per decoder block, counted from the config: attention (q, k, v, o) or
    Qwen3.5's Gated DeltaNet (in_proj_qkv, _z, _a, _b, out_proj), and the MLP's three."""
    text = model.config.get_text_config()
    types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    return sum(3 + (5 if t == "linear_attention" else 4) for t in types)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_language_model_only_by_default(students, kind):
    model = load_model(students[kind])
    pattern = lora_target_modules(model)
    names = [n for n, _ in model.named_modules()]
    assert not [n for n in names if "visual" in n and re.fullmatch(pattern, n)]

    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0)
    adapted = _adapted(peft_model)
    assert len(adapted) == _language_linears(model)
    assert all(".language_model.layers." in n for n in adapted)
    if kind == "qwen3.5":  # both kinds of token mixer of the hybrid blocks are adapted
        assert any(".linear_attn.in_proj_qkv" in n for n in adapted)
        assert any(".self_attn.q_proj" in n for n in adapted)
    assert not any("visual" in n for n in adapted)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_tune_vision_adapts_vision_blocks_not_merger(students, kind):
    model = load_model(students[kind])
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, tune_vision=True)
    adapted = _adapted(peft_model)
    vision = [n for n in adapted if "visual" in n]
    depth = model.config.vision_config.depth
    per_block = 5 if kind == "qwen2.5-vl" else 4  # qkv, proj + 2 or 3 MLP linears
    assert len(vision) == depth * per_block
    assert all(".visual.blocks." in n for n in vision)
    assert not any("merger" in n or "patch_embed" in n for n in adapted)
    assert len(adapted) - len(vision) == _language_linears(model)


def test_lora_trains_with_gradient_checkpointing(students):
    import torch

    from connectodistill.core.conversation import build_messages

    processor, _ = load_processor(students["qwen3-vl"])
    model = load_model(students["qwen3-vl"])
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, gradient_checkpointing=True)
    flag = "is_activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else "is_gradient_checkpointing"
    assert getattr(model, flag)
    peft_model.train()
    text = processor.apply_chat_template(build_messages("Which class?", "<answer>a</answer>"), tokenize=False)
    batch = processor(text=[text], images=[_image()] * 3, return_tensors="pt")
    out = peft_model(**batch, labels=batch["input_ids"].clone())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_lora_target_modules_rejects_a_model_without_language_layers():
    import torch

    with pytest.raises(UserError):
        lora_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("kind", KINDS)
def test_lora_tune_merger_adapts_only_the_projector(students, kind):
    model = load_model(students[kind])
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, tune_merger=True)
    vision = [n for n in _adapted(peft_model) if "visual" in n]
    assert vision and all("merger" in n for n in vision)
    vc = model.config.vision_config
    # Qwen3-VL's deepstack mergers too; Qwen3.5 has none (its config may still name indexes)
    expected = 2 * (1 + len(vc.deepstack_visual_indexes)) if kind == "qwen3-vl" else 2
    assert len(vision) == expected
