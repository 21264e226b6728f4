"""bench/gpu.py's FLOP model: what one training step computes, counted from its shapes.

MFU needs a FLOP count that does not depend on the machine: it is written down here (and
quoted whole in the JSON as ``flop_model``) so that a reader can check the arithmetic, and
tests/test_bench_gpu.py checks it against the tiny model's own linear weights.
"""

from __future__ import annotations

H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA's datasheet figure for dense bf16 (H100 and H200 SXM)

FLOP_MODEL = (
    "Counted per step from the batch's real (unpadded) sequence lengths and image grids, "
    "multiply-add = 2 FLOPs. Language model, per token: 2 x the decoder layers' linear "
    "weights (q,k,v,o,gate,up,down) + 2 x lm_head at the positions the loss reads (the "
    "collator's logits_to_keep; every position without it) "
    "+ LoRA 2 r (in+out) per adapted linear; causal attention 2 x heads x head_dim x L(L+1) "
    "per layer and sequence. Vision tower, per patch: patch embedding + 2 x the blocks' linear "
    "weights, full attention 4 x hidden x P^2 per block and image, the merger and the 3 "
    "deepstack mergers per merged token. Backward with frozen base weights: activation "
    "gradients only (1 x forward for linears, 2 x for attention) plus the LoRA weight "
    "gradients; the vision tower has no backward unless --tune-vision. mfu = (forward + "
    "backward) / (step time incl. the collator x peak); mfu_model_only uses the model time "
    "alone; hfu_model_only also counts gradient checkpointing's recomputed forward. Peak: "
    "--peak-flops, default 989e12 FLOP/s (H100/H200 SXM dense bf16). Checked on the tiny "
    "model against torch.utils.flop_counter (matmuls; it skips CPU sdpa): equal. Qwen3.5 "
    "(hybrid): full-attention layers have a gated q_proj (2 x heads x head_dim outputs) and "
    "causal attention as above; Gated DeltaNet layers have in_proj_qkv/z/a/b and out_proj "
    "(counted like the other linears), their depthwise causal conv 2 x kernel x conv_dim per "
    "token, and the delta rule 2 x 3 x key_dim x value_dim per token and value head (S k, the "
    "rank-1 update, S q of the recurrent form; the chunked kernel's intra-chunk terms are left "
    "out, so its MFU is a lower bound); one merger, no deepstack."
)


def text_layers(t) -> list[dict]:
    """Per decoder layer: its linear weights, the (in + out) sum LoRA adds per adapted linear,
    and the token mixer's FLOPs per token that are not linear weights (None: causal attention)."""
    h, ffn = t.hidden_size, t.intermediate_size
    mlp_w, mlp_lora = 3 * h * ffn, 3 * (h + ffn)
    q = t.num_attention_heads * t.head_dim
    kv = t.num_key_value_heads * t.head_dim
    hybrid = getattr(t, "layer_types", None) and getattr(t, "linear_num_value_heads", None)
    gate = 2 if hybrid else 1  # Qwen3.5's full attention gates its output with a second q_proj half
    out = []
    for kind in (t.layer_types if hybrid else ["full_attention"] * t.num_hidden_layers):
        if kind == "linear_attention":
            kd = t.linear_num_key_heads * t.linear_key_head_dim
            vd = t.linear_num_value_heads * t.linear_value_head_dim
            vh = t.linear_num_value_heads
            outs = (2 * kd + vd, vd, vh, vh)  # in_proj_qkv, in_proj_z, in_proj_b, in_proj_a
            w = h * sum(outs) + vd * h
            lora = sum(h + o for o in outs) + (vd + h)
            mixer = 2 * t.linear_conv_kernel_dim * (2 * kd + vd) \
                + 2 * 3 * t.linear_key_head_dim * t.linear_value_head_dim * vh
            out.append({"weights": w + mlp_w, "lora": lora + mlp_lora, "mixer": mixer, "q": None})
        else:
            w = h * gate * q + 2 * h * kv + q * h
            lora = (h + gate * q) + 2 * (h + kv) + (q + h)
            out.append({"weights": w + mlp_w, "lora": lora + mlp_lora, "mixer": 0, "q": q})
    return out


def step_flops(cfg, seq_lens: list[int], grids: list[tuple[int, int, int]], *, lora_r: int,
               tune_vision: bool, head_tokens: int | None = None) -> dict:
    """Forward, backward and recomputed FLOPs of one training step (see FLOP_MODEL)."""
    t, v = cfg.text_config, cfg.vision_config
    h, vocab = t.hidden_size, t.vocab_size
    layers = text_layers(t)
    tokens = sum(seq_lens)
    lin = 2 * sum(x["weights"] for x in layers) * tokens
    mixer = sum(x["mixer"] for x in layers) * tokens  # Qwen3.5's linear attention
    attn = sum(x["q"] for x in layers if x["q"]) * sum(2 * n * (n + 1) for n in seq_lens) + mixer
    head = 2 * h * vocab * (tokens if head_tokens is None else head_tokens)
    lora = 2 * lora_r * sum(x["lora"] for x in layers) * tokens
    text_fwd = lin + attn + head + lora
    text_bwd = lin + 2 * attn + head + 2 * lora
    text_re = lin + attn + lora

    hv, depth, vffn, m = v.hidden_size, v.depth, v.intermediate_size, v.spatial_merge_size
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size**2
    per_image = [a * b * c for a, b, c in grids]
    patches = sum(per_image)
    block_w = hv * 3 * hv + hv * hv + 2 * hv * vffn
    block_lora = (hv + 3 * hv) + 2 * hv + 2 * (hv + vffn)
    merger_w = (hv * m * m) ** 2 + hv * m * m * v.out_hidden_size
    # Qwen3-VL's deepstack mergers; Qwen3.5's config may name indexes but builds none
    deepstack = [] if cfg.model_type == "qwen3_5" else getattr(v, "deepstack_visual_indexes", None)
    n_mergers = 1 + len(deepstack or [])
    v_embed = 2 * patch_in * hv * patches
    v_lin = 2 * depth * block_w * patches
    v_attn = depth * sum(4 * hv * p * p for p in per_image)
    v_merge = 2 * n_mergers * merger_w * patches // (m * m)
    v_lora = 2 * lora_r * depth * block_lora * patches if tune_vision else 0
    vis_fwd = v_embed + v_lin + v_attn + v_merge + v_lora
    vis_bwd = (v_lin + 2 * v_attn + v_merge + 2 * v_lora) if tune_vision else 0
    vis_re = (v_lin + v_attn + v_lora) if tune_vision else 0
    return {"forward": text_fwd + vis_fwd, "backward": text_bwd + vis_bwd,
            "recompute": text_re + vis_re, "vision_forward": vis_fwd, "text_forward": text_fwd}
