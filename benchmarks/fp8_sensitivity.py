"""Per-layer-group FP8 sensitivity: quantize one group of linears at a time and measure the transformer's output
error against the unquantized model, so the default policy's choices (e.g. norm1.linear in BF16) can be checked
on any checkpoint.

    python -m benchmarks.fp8_sensitivity                       # tiny random model (synthetic: says so)
    python -m benchmarks.fp8_sensitivity --model PATH --device cuda --dtype bfloat16 --json out.json

Each group is quantized with FP8 emulation (kernel='torch-reference': the exact numerics of the GPU path, on any
device), without fusing, so every group is measured on its own. The error is ||y - y_ref|| / ||y_ref|| of the
predicted velocity, for seeded random inputs of the given size.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch
from torch import nn

from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8.checkpoints import load_transformer
from omnigen2_fp8.fp8.config import DEFAULT_INCLUDE, Fp8Config, Kernel
from omnigen2_fp8.fp8.quantize import quantize_fp8
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig

_B = r"(layers|noise_refiner|ref_image_refiner|context_refiner)\.\d+"
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": (rf"re:{_B}\.attn\.(to_q|to_k|to_v)",),
    "attn_out": (rf"re:{_B}\.attn\.to_out\.0",),
    "gate_up": (rf"re:{_B}\.feed_forward\.(linear_1|linear_3)",),
    "down": (rf"re:{_B}\.feed_forward\.linear_2",),
    "norm1.linear (AdaLN modulation)": ("*norm1.linear",),
    "patch embedders": ("x_embedder", "ref_image_patch_embedder"),
    "timestep + caption embedders": ("time_caption_embed.*",),
    "norm_out": ("norm_out.*",),
    "default policy (qkv + attn_out + gate_up + down)": DEFAULT_INCLUDE,
}


def synthetic_inputs(model: nn.Module, latent_side: int, text_tokens: int, device, dtype, seed: int = 0):
    """One sample: a noisy latent and one reference latent of side `latent_side`, `text_tokens` text features."""
    c = model.config
    g = torch.Generator(device="cpu").manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    latents = [rnd(c.in_channels, latent_side, latent_side)]
    refs = [[rnd(c.in_channels, latent_side, latent_side)]]
    text = rnd(1, text_tokens, c.text_feat_dim)
    mask = torch.ones(1, text_tokens, dtype=torch.long)
    return latents, torch.tensor([0.5], device=device), text, mask, refs


@torch.no_grad()
def layer_sensitivity(build_model: Callable[[], nn.Module], inputs: tuple,
                      groups: dict[str, tuple[str, ...]] = GROUPS,
                      weight_granularity: str = "per_channel") -> list[dict]:
    """For each group: build a fresh model, quantize only that group (emulated FP8), run `inputs`, and return
    rows {group, layers, params, param_share, flop_share, rel_err}: rel_err = ||y - y_ref|| / ||y_ref||; flop_share =
    the group's share of all linear-layer FLOPs for these inputs (what FP8 could speed up)."""
    reference_model = build_model()
    total_params = sum(p.numel() for p in reference_model.parameters())
    flops = _count_linear_flops(reference_model, inputs)
    reference = _flat(reference_model(*inputs))
    del reference_model
    total_flops = sum(flops.values())
    rows = []
    for name, patterns in groups.items():
        model = build_model()
        cfg = Fp8Config(include=patterns, exclude=(), weight_granularity=weight_granularity,
                        kernel=Kernel.TORCH_REFERENCE, fuse_projections=False, fuse_swiglu=False)
        report = quantize_fp8(model, cfg)
        params = sum(d.in_features * d.out_features for d in report.quantized)
        y = _flat(model(*inputs))
        rows.append({"group": name, "layers": len(report.quantized), "params": params,
                     "param_share": params / total_params,
                     "flop_share": sum(flops.get(d.name, 0) for d in report.quantized) / total_flops,
                     "rel_err": float((y - reference).norm() / reference.norm())})
        del model
    return rows


def _count_linear_flops(model: nn.Module, inputs: tuple) -> dict[str, int]:
    """2 * rows * K * N per nn.Linear call, summed over one forward."""
    flops: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod, args, out, name=name):
                flops[name] = flops.get(name, 0) + 2 * args[0].numel() // mod.in_features * mod.in_features * \
                    mod.out_features
            handles.append(m.register_forward_hook(hook))
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return flops


def _flat(out) -> torch.Tensor:
    return torch.cat([o.float().flatten() for o in out]) if isinstance(out, (list, tuple)) else out.float().flatten()


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'group':<50} {'layers':>6} {'params %':>9} {'FLOPs %':>8} {'output rel err':>15}"]
    for r in rows:
        lines.append(f"{r['group']:<50} {r['layers']:>6} {100 * r['param_share']:>8.2f}% "
                     f"{100 * r['flop_share']:>7.2f}% {r['rel_err']:>15.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (random weights) or a transformer folder / hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--latent-side", type=int, default=16, help="latent side (8 px per latent pixel)")
    parser.add_argument("--text-tokens", type=int, default=12)
    parser.add_argument("--weight-granularity", default="per_channel", choices=["per_channel", "per_tensor"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows (and the settings) to this JSON file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    if args.model == "tiny":
        def build():
            torch.manual_seed(args.seed)
            return OmniGen2Transformer(TransformerConfig.from_name("tiny")).to(args.device, dtype).eval()
    else:
        def build():
            return load_transformer(args.model, dtype=dtype, device=args.device).eval()

    probe = build()
    inputs = synthetic_inputs(probe, args.latent_side, args.text_tokens, args.device, dtype, args.seed)
    del probe
    rows = layer_sensitivity(build, inputs, weight_granularity=args.weight_granularity)
    synthetic = args.model == "tiny"
    if synthetic:
        print("SYNTHETIC: tiny model with random weights; the ranking on a real checkpoint can differ.")
    print(format_rows(rows))
    if args.json:
        write_json_atomic(args.json, {"manifest": run_manifest(synthetic="tiny" if synthetic else False,
                                                               device=args.device),
                                      "settings": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
