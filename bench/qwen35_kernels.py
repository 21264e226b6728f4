"""Qwen3.5's token mixer on a GPU at Qwen3.5-9B's shape: what flash-linear-attention and
causal-conv1d change.

transformers picks each kernel when ``modeling_qwen3_5`` is imported: flash-linear-attention's
chunked delta rule if ``fla`` imports, else a reference PyTorch one; causal-conv1d's CUDA conv
if ``causal_conv1d`` imports, else ``F.conv1d``. Run this twice, once with ``fla`` importable and
once without (``bench/gpu_qwen35_device.sh`` does): each run times one Gated DeltaNet layer of the
9B (hidden 4096, 16 key / 32 value heads of 128, conv kernel 4) forward + backward in bf16, and
the conv alone, and prints one JSON line. The run without ``fla`` saves a layer output for a fixed
input, the run with it compares (same weights, same input).

    python bench/qwen35_kernels.py --tokens 3400 --save /tmp/q35_ref.pt      # without fla
    PYTHONPATH=/tmp/fla python bench/qwen35_kernels.py --tokens 3400 --compare /tmp/q35_ref.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

LAYERS = 24  # Gated DeltaNet layers of the 9B (32 layers, every 4th full attention)


def chosen(fn) -> str:
    """The implementation transformers' wrapper calls (its closure's ``implementation``)."""
    free = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ()), strict=True))
    impl = free.get("implementation", fn)
    return f"{getattr(impl, '__module__', '?')}.{getattr(impl, '__name__', '?')}"


def timed(fn, warmup: int = 3, iters: int = 10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=3400, help="sequence length (3 views of 1024 px + prompt)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--save", help="save the layer output of the fixed input here")
    ap.add_argument("--compare", help="compare the layer output with this saved one")
    args = ap.parse_args()

    import torch
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    cfg = Qwen3_5TextConfig(hidden_size=4096, num_hidden_layers=4, linear_num_key_heads=16,
                            linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
                            linear_conv_kernel_dim=4)
    torch.manual_seed(0)
    layer = m.Qwen3_5GatedDeltaNet(cfg, layer_idx=0).to("cuda", torch.bfloat16)
    x = torch.randn(args.batch, args.tokens, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)

    def layer_step():
        inp = x.detach().requires_grad_(True)
        layer(inp).float().square().mean().backward()

    conv_dim = 2 * 16 * 128 + 32 * 128
    mixed = torch.randn(args.batch, conv_dim, args.tokens, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(conv_dim, 4, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def conv_step():
        inp = mixed.detach().requires_grad_(True)
        m.causal_conv1d_fn(inp, weight, None, activation="silu").float().square().mean().backward()

    def layer_forward():
        with torch.no_grad():
            layer(x)

    fwd_s, conv_s = timed(layer_forward), timed(conv_step)
    try:
        layer_s, bwd_error = timed(layer_step), None
    except RuntimeError as e:  # fla refuses its backward on some Triton versions (Hopper)
        layer_s, bwd_error = float("nan"), str(e).splitlines()[0][:300]
    with torch.no_grad():
        out = layer(x[:, :512]).float().cpu()
    doc = {"fla_importable": importlib.util.find_spec("fla") is not None,
           "causal_conv1d_importable": importlib.util.find_spec("causal_conv1d") is not None,
           "delta_rule": chosen(m.torch_chunk_gated_delta_rule), "conv": chosen(m.causal_conv1d_fn),
           "batch": args.batch, "tokens": args.tokens,
           "layer_fwd_ms": round(fwd_s * 1e3, 2), "layer_fwd_bwd_ms": round(layer_s * 1e3, 2),
           "backward_error": bwd_error, "conv_fwd_bwd_ms": round(conv_s * 1e3, 3),
           f"x{LAYERS}_layers_fwd_ms": round(fwd_s * 1e3 * LAYERS, 1),
           f"x{LAYERS}_layers_ms": round(layer_s * 1e3 * LAYERS, 1),
           f"x{LAYERS}_conv_ms": round(conv_s * 1e3 * LAYERS, 2),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if args.save:
        torch.save(out, args.save)
    if args.compare:
        ref = torch.load(args.compare)
        doc["max_abs_diff_vs_saved"] = float((out - ref).abs().max())
        doc["ref_abs_mean"] = float(ref.abs().mean())
    print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
