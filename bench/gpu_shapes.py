"""bench/gpu.py's model shapes: Qwen3-VL-8B's and Qwen3.5-9B's configs, the smoke runs' tiny ones.

Kept apart from the measurements because the shapes are facts to check (a meta-device build
gives the parameter and LoRA counts without memory or weights), while the sections only time
whatever config they are handed.
"""

from __future__ import annotations

import gc
import math
import time

# Qwen/Qwen3-VL-8B-Instruct config.json as published on the Hub (transformers 4.57 format
# there: `rope_scaling` + `rope_theta`; written here as transformers 5's `rope_parameters`).
# Cross-checked against transformers' Qwen3VLConfig: the vision defaults are these values
# except out_hidden_size (3584 there, 4096 = the text hidden size here).
QWEN3_VL_8B_CONFIG: dict = {
    "model_type": "qwen3_vl",
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                            "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}
# What a meta-device build of that config must give (facts file: ~8.77B, vision ~576M; LoRA
# r=16 on the language model's attention + MLP: ~43.6M trainable).
EXPECTED_PARAMS = (8.6e9, 8.9e9)
EXPECTED_LORA_TRAINABLE = (43e6, 44e6)

# The smoke run's own tiny Qwen3-VL (same family, same code paths; vocab set from the tokenizer).
TINY_CONFIG: dict = {
    "model_type": "qwen3_vl",
    "text_config": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "hidden_act": "silu",
        "vocab_size": None, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                            "mrope_section": [6, 5, 5], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
        "num_position_embeddings": 256, "deepstack_visual_indexes": [0],
    },
    "tie_word_embeddings": False,
}


# Qwen/Qwen3.5-9B: hidden 4096, 32 layers as 8 x (3 Gated DeltaNet + 1 gated attention), gated
# attention 16 query / 4 key-value heads of 256 (a quarter rotated: mrope [11, 11, 10], theta
# 1e7), Gated DeltaNet 16 key / 32 value heads of 128, FFN 12288, vocabulary 248320, untied
# head; vision as Qwen3-VL's (27 blocks of 1152, patch 16, merge 2) without deepstack, merged
# into 4096. These are transformers' Qwen3_5Config defaults (documented against Qwen3.5-27B,
# whose vision tower is the same) with out_hidden_size set to the 9B's text width.
QWEN3_5_9B_CONFIG: dict = {
    "model_type": "qwen3_5",
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 32,
        "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(32)],
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "hidden_act": "silu",
        "vocab_size": 248320,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
    },
    "tie_word_embeddings": False,
}
# What a meta-device build of that config must give: ~9.4B parameters (vision ~0.46B); LoRA r=16
# on every decoder linear, Gated DeltaNet's in_proj_qkv/z/a/b and out_proj included: ~43M
# (~29M if linear_attn were missed, as the Qwen-VL pattern does).
EXPECTED_PARAMS_9B = (9.2e9, 9.6e9)
EXPECTED_LORA_TRAINABLE_9B = (42e6, 45e6)

# The smoke run's tiny Qwen3.5: both kinds of layer, a quarter of head_dim 32 rotated (4 freqs).
TINY_QWEN35_CONFIG: dict = {
    "model_type": "qwen3_5",
    "text_config": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "layer_types": ["linear_attention", "full_attention"],
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "linear_num_key_heads": 1, "linear_num_value_heads": 2, "linear_key_head_dim": 16,
        "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4, "hidden_act": "silu",
        "vocab_size": None, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
        "num_position_embeddings": 256,
    },
    "tie_word_embeddings": False,
}

# --model: the real shape measured on a GPU, the tiny one of --smoke, the meta check's ranges.
MODELS: dict = {
    "qwen3-vl-8b": {"name": "Qwen3-VL-8B-Instruct", "kind": "qwen3-vl", "config": QWEN3_VL_8B_CONFIG,
                    "tiny": TINY_CONFIG, "params": EXPECTED_PARAMS, "lora": EXPECTED_LORA_TRAINABLE},
    "qwen3.5-9b": {"name": "Qwen3.5-9B", "kind": "qwen3.5", "config": QWEN3_5_9B_CONFIG,
                   "tiny": TINY_QWEN35_CONFIG, "params": EXPECTED_PARAMS_9B, "lora": EXPECTED_LORA_TRAINABLE_9B},
}


def model_config(base: dict, tokenizer):
    """A transformers Qwen3VLConfig from ``base``, with the kit tokenizer's special-token ids."""
    import copy

    from transformers import AutoConfig

    d = copy.deepcopy(base)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    d.update(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
             vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = d["text_config"]
    if text.get("vocab_size") is None:
        text["vocab_size"] = int(math.ceil(len(tokenizer) / 64) * 64)
    text["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text["pad_token_id"] = tokenizer.pad_token_id
    text["bos_token_id"] = None
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer ({len(tokenizer)}) larger than vocab_size {text['vocab_size']}")
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


def count_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "vision": vision, "language_and_head": total - vision, "trainable": trainable}


def meta_check(modeling, tokenizer, lora: dict, model: str = "qwen3-vl-8b") -> dict:
    """A real config on the meta device: parameter counts, LoRA-trainable parameters, in range."""
    import torch

    spec = MODELS[model]
    cfg = model_config(spec["config"], tokenizer)
    t = time.perf_counter()
    net = modeling.build_model_from_config(cfg, device="meta", dtype=torch.bfloat16)
    base = count_params(net)
    net = modeling.add_lora(net, r=lora["lora_r"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"])
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    out = {"params_total": base["total"], "params_vision": base["vision"],
           "lora_r": lora["lora_r"], "lora_trainable_language_model": trainable,
           "lora_adapted_linears": sum(1 for _, m in net.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)),
           "seconds": round(time.perf_counter() - t, 2)}
    out["params_in_range"] = spec["params"][0] <= base["total"] <= spec["params"][1]
    out["lora_trainable_in_range"] = spec["lora"][0] <= trainable <= spec["lora"][1]
    print(f"{spec['name']} on meta: {base['total'] / 1e9:.3f}B parameters (vision "
          f"{base['vision'] / 1e6:.1f}M), LoRA r={lora['lora_r']} trainable {trainable / 1e6:.2f}M", flush=True)
    del net
    gc.collect()
    return out
