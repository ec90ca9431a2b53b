"""Per-layer FP8 vs BF16 at OmniGen2 shapes on one GPU, side by side in one process, plus GPU correctness checks.

Layers (K -> N): qkv fused 2520 -> 4200, attention out 2520 -> 2520, gate/up fused 2520 -> 20480, down 10240 -> 2520,
and down with the SwiGLU folded into its activation quantization ([M, 20480] gate|up -> 2520) against BF16
silu(gate) * up followed by the GEMM. Tokens M = 4.4k, 8.5k, 12.6k.
FP8 times include the activation quantization (fused Triton kernel) and the output slice; the GEMM runs on K, N
zero-padded to 16. Timing: triton.testing.do_bench (CUDA events, L2 flushed before every call, median).

    python -m benchmarks.bench_fp8_layers --out results/fp8_layers_h100.json
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8.fp8 import Fp8Config, Fp8Linear, Fp8SwiGLUFeedForward, Kernel
from omnigen2_fp8.fp8.dispatch import with_launch
from omnigen2_fp8.fp8 import primitives as P
from omnigen2_fp8.fp8.kernels import DEFAULT_LAUNCH, LaunchConfig, quantize_activation_triton

LAYERS = {  # name: (K, N, swiglu input)
    "qkv": (2520, 4200, False),
    "attn_out": (2520, 2520, False),
    "gate_up": (2520, 20480, False),
    "down": (10240, 2520, False),
    "down_swiglu": (10240, 2520, True),
}
GOALS = {"qkv": 1.3, "attn_out": 1.3, "gate_up": 1.5, "down": 1.5, "down_swiglu": 1.5, "ffn": 1.5}
TOKENS = (4400, 8500, 12600)


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median"))


def bench_graph_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))


def make_layer(k: int, n: int, config: Fp8Config,
               launch: LaunchConfig = DEFAULT_LAUNCH) -> tuple[torch.Tensor, Fp8Linear]:
    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(linear.weight, std=0.02)
    layer = Fp8Linear.from_linear(linear, config)
    layer.use_plan(with_launch(layer.kernel_plan(), launch))
    return linear.weight.detach().clone(), layer


def ordinal(codes: torch.Tensor) -> torch.Tensor:
    c = codes.view(torch.uint8).int()
    return torch.where(c >= 128, -(c - 128), c)


def check_kernel(m: int, k: int, swiglu: bool) -> dict:
    """Triton kernel vs the torch reference on the GPU: e4m3 codes within one step, scales equal."""
    x = torch.randn(m, 2 * k if swiglu else k, device="cuda", dtype=torch.bfloat16) * 3
    kp = P.round_up(k, 16)
    out = {}
    for per_token in (True, False):
        q, s = quantize_activation_triton(x, kp, per_token, swiglu)
        qr, sr = P.quantize_activation(x, kp, per_token, swiglu)
        diff = (ordinal(q) - ordinal(qr)).abs()
        out["per_token" if per_token else "per_tensor"] = {
            "max_code_step_diff": int(diff.max()), "frac_codes_differing": float((diff > 0).float().mean()),
            "max_scale_rel_diff": float(((s - sr).abs() / sr).max()),
            "padding_zero": bool((q[:, k:].view(torch.uint8) == 0).all())}
    if swiglu:  # the model's path: raw gate/up GEMM sums, dequantized inside the kernel
        rs, cs = torch.rand(m, 1, device="cuda") * 1e-2, torch.rand(2 * k, device="cuda") * 1e-2
        q, s = quantize_activation_triton(x, kp, True, True, rs, cs)
        qr, sr = P.quantize_activation(x, kp, True, True, rs, cs)
        diff = (ordinal(q) - ordinal(qr)).abs()
        out["per_token_dequant"] = {"max_code_step_diff": int(diff.max()),
                                    "frac_codes_differing": float((diff > 0).float().mean()),
                                    "max_scale_rel_diff": float(((s - sr).abs() / sr).max())}
    return out


def check_layer(k: int, n: int, swiglu: bool) -> dict:
    """Fp8Linear (cuBLASLt) vs exact emulation of the same FP8 values, and vs the BF16 layer."""
    w, layer = make_layer(k, n, Fp8Config())
    x = torch.randn(1024, 2 * k if swiglu else k, device="cuda", dtype=torch.bfloat16)
    y = layer.forward_swiglu(x) if swiglu else layer(x)
    xin = (P.swiglu(x).to(torch.bfloat16)) if swiglu else x
    y_bf16 = F.linear(xin, w).float()
    xq, xs = P.quantize_activation(x, layer.in_padded, True, swiglu)
    y_emu = P.emulated_scaled_mm(xq, xs, layer.weight, layer.weight_scale, torch.float32, torch.float64)[:, :n]
    rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
    return {"rel_err_vs_emulation": rel(y, y_emu), "rel_err_vs_bf16": rel(y, y_bf16)}


def bench_layer(name: str, m: int, launch: LaunchConfig = DEFAULT_LAUNCH) -> dict:
    k, n, swiglu = LAYERS[name]
    w, fp8 = make_layer(k, n, Fp8Config(), launch)
    _, fp8_tensorwise = make_layer(k, n, Fp8Config(weight_granularity="per_tensor",
                                                   activation_granularity="per_tensor"), launch)
    _, fp8_trap = make_layer(k, n, Fp8Config(kernel=Kernel.CUBLAS_TORCH_QUANT), launch)
    x = torch.randn(m, 2 * k if swiglu else k, device="cuda", dtype=torch.bfloat16)
    if swiglu:
        def bf16():
            gate, up = x.chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, w)
        run = {"fp8": lambda: fp8.forward_swiglu(x), "fp8_per_tensor": lambda: fp8_tensorwise.forward_swiglu(x),
               "fp8_torch_quant": lambda: fp8_trap.forward_swiglu(x)}
    else:
        bf16 = lambda: F.linear(x, w)  # noqa: E731
        run = {"fp8": lambda: fp8(x), "fp8_per_tensor": lambda: fp8_tensorwise(x),
               "fp8_torch_quant": lambda: fp8_trap(x)}
        if name == "gate_up":  # as Fp8SwiGLUFeedForward runs it: tensor-wise GEMM, scales applied by the consumer
            run["fp8_model_path"] = lambda: fp8.matmul_unscaled(fp8.quantize_input(x)[0])
    kp = fp8.in_padded
    xq, xs = quantize_activation_triton(x, kp, True, swiglu, launch=launch)
    wt, ws = fp8.weight.t(), fp8.weight_scale.view(1, -1)
    xq_t, xs_t = quantize_activation_triton(x, kp, False, swiglu, launch=launch)
    one = torch.ones((), device="cuda")
    row = {"M": m, "K": k, "N": n, "K_padded": kp, "N_padded": fp8.out_padded, "bf16_ms": bench_ms(bf16)}
    for variant, fn in run.items():
        row[f"{variant}_ms"] = bench_ms(fn)
    row["fp8_gemm_only_rowwise_ms"] = bench_ms(
        lambda: torch._scaled_mm(xq, wt, scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16))
    row["fp8_gemm_only_tensorwise_ms"] = bench_ms(
        lambda: torch._scaled_mm(xq_t, wt, scale_a=xs_t.reshape(()), scale_b=one, out_dtype=torch.bfloat16))
    # CUDA-graph replay removes the Python launch cost, which small layers in eager mode cannot hide
    row["bf16_cudagraph_ms"] = bench_graph_ms(bf16)
    row["fp8_cudagraph_ms"] = bench_graph_ms(run["fp8"])
    row["speedup_fp8_cudagraph"] = row["bf16_cudagraph_ms"] / row["fp8_cudagraph_ms"]
    row["quant_kernel_ms"] = bench_ms(lambda: quantize_activation_triton(x, kp, True, swiglu, launch=launch))
    moved = x.numel() * 2 + m * kp + m * 4
    row["quant_kernel_gb_per_s"] = moved / row["quant_kernel_ms"] / 1e6
    flops = 2 * m * k * n
    row["bf16_tflops"] = flops / row["bf16_ms"] / 1e9
    row["fp8_tflops"] = flops / row["fp8_ms"] / 1e9
    for variant in run:
        row[f"speedup_{variant}"] = row["bf16_ms"] / row[f"{variant}_ms"]
    row["speedup_gemm_only_rowwise"] = row["bf16_ms"] / row["fp8_gemm_only_rowwise_ms"]
    row["goal"] = GOALS[name]
    row["meets_goal"] = row["speedup_fp8"] >= GOALS[name]
    if "fp8_model_path" in run:
        row["fp8_model_path_cudagraph_ms"] = bench_graph_ms(run["fp8_model_path"])
        row["speedup_fp8_model_path_cudagraph"] = row["bf16_cudagraph_ms"] / row["fp8_model_path_cudagraph_ms"]
        row["meets_goal_model_path"] = row["speedup_fp8_model_path"] >= GOALS[name]
        print(f"  {name} as the model runs it (tensor-wise GEMM): {row['fp8_model_path_ms']:.3f} ms, "
              f"{row['speedup_fp8_model_path']:.2f}x (CUDA graph {row['speedup_fp8_model_path_cudagraph']:.2f}x)")
    return row


SWEEP = {  # (K, swiglu with dequantization): (block_k, num_warps, stages, hw_cast); block_k >= padded K: one pass
    (2520, False): [(512, 4, 1, False), (512, 4, 1, True), (512, 4, 2, True), (512, 8, 2, True), (256, 2, 2, True),
                    (1024, 4, 2, True), (4096, 4, 1, True), (4096, 8, 1, True)],
    (10240, True): [(2048, 8, 1, False), (2048, 8, 1, True), (2048, 8, 2, True), (2048, 8, 3, True),
                    (1024, 8, 2, True), (4096, 16, 2, True), (16384, 16, 1, True), (16384, 32, 1, True)],
    (10240, False): [(16384, 8, 1, False), (16384, 8, 1, True), (16384, 16, 1, True), (2048, 8, 2, True)],
}


def tune_quant_kernel(m: int) -> tuple[list[dict], dict]:
    """Sweep launch configs (and the e4m3 conversion: integer encoder vs hardware cvt) of the quantization kernel
    at the model's row widths; returns the rows and the fastest hardware-cast config per width."""
    rows, best = [], {}
    for (k, swiglu), configs in SWEEP.items():
        x = torch.randn(m, 2 * k if swiglu else k, device="cuda", dtype=torch.bfloat16)
        extra = {}
        if swiglu:  # the model's down input: raw gate/up sums plus their scales
            extra = dict(row_scale=torch.rand(m, 1, device="cuda") * 1e-3,
                         col_scale=torch.rand(2 * k, device="cuda") * 1e-3)
        kp = P.round_up(k, 16)
        shape_rows = []
        for block, warps, stages, hw in configs:
            ms = bench_ms(lambda: quantize_activation_triton(x, kp, True, swiglu, block_k=block, num_warps=warps,
                                                             hw_cast=hw, stages=stages, **extra))
            shape_rows.append({"M": m, "K": k, "swiglu_dequant": swiglu, "block_k": block, "num_warps": warps,
                               "stages": stages, "hw_cast": hw, "single_pass": block >= kp, "ms": ms,
                               "gb_per_s": (x.numel() * 2 + m * kp + m * 4) / ms / 1e6})
        rows += shape_rows
        win = min((r for r in shape_rows if r["hw_cast"]), key=lambda r: r["ms"])
        best[(k, swiglu)] = (win["block_k"], win["num_warps"], win["stages"])
    return rows, best


def bench_ffn(m: int, launch: LaunchConfig = DEFAULT_LAUNCH) -> dict:
    """Whole SwiGLU feed-forward: BF16 (gate/up GEMM, silu * up, down GEMM) vs Fp8SwiGLUFeedForward."""
    k, f = 2520, 10240
    w13, l13 = make_layer(k, 2 * f, Fp8Config(), launch)
    w2, l2 = make_layer(f, k, Fp8Config(), launch)
    ffn = Fp8SwiGLUFeedForward(l13, l2)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    def bf16():
        gate, up = F.linear(x, w13).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w2)

    def fp8_composed():  # row-wise gate/up GEMM, then the SwiGLU-folded down projection
        return l2.forward_swiglu(l13(x))

    row = {"M": m, "K": k, "F": f, "bf16_ms": bench_ms(bf16), "fp8_ms": bench_ms(lambda: ffn(x)),
           "fp8_rowwise_composed_ms": bench_ms(fp8_composed)}
    with torch.no_grad():
        ref = bf16().float()
        row["rel_err_vs_bf16"] = float((ffn(x).float() - ref).norm() / ref.norm())
    row["speedup_fp8"] = row["bf16_ms"] / row["fp8_ms"]
    row["bf16_cudagraph_ms"], row["fp8_cudagraph_ms"] = bench_graph_ms(bf16), bench_graph_ms(lambda: ffn(x))
    row["speedup_fp8_cudagraph"] = row["bf16_cudagraph_ms"] / row["fp8_cudagraph_ms"]
    row["speedup_fp8_rowwise_composed"] = row["bf16_ms"] / row["fp8_rowwise_composed_ms"]
    row["goal"] = GOALS["ffn"]
    row["meets_goal"] = row["speedup_fp8"] >= GOALS["ffn"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result JSON path")
    parser.add_argument("--tokens", type=int, nargs="*", default=list(TOKENS))
    parser.add_argument("--no-tune", action="store_true", help="skip the quantization-kernel launch sweep")
    parser.add_argument("--launch-out", default=None, help="write the sweep winners here (for the transformer bench)")
    parser.add_argument("--use-sweep", action="store_true", help="time the layers with the sweep winners instead "
                        "of the built-in launch heuristic")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9)")
    torch.manual_seed(0)
    result = {"manifest": run_manifest(synthetic="random-tensors", extra={"benchmark": "fp8 per-layer"}),
              "timing": "triton.testing.do_bench: CUDA events, L2 flush before each call, warmup 25 ms, rep 150 ms, "
                        "median", "layers": {}, "checks": {}}
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    for name, (k, n, swiglu) in LAYERS.items():
        result["checks"][name] = {"kernel_vs_torch": check_kernel(4400, k, swiglu), "layer": check_layer(k, n, swiglu)}
        print(f"check {name}: {result['checks'][name]}")
    write_json_atomic(args.out, result)
    launch = DEFAULT_LAUNCH
    if not args.no_tune:
        result["quant_kernel_sweep"], best = tune_quant_kernel(8500)
        for r in result["quant_kernel_sweep"]:
            print(f"sweep K={r['K']} swiglu={r['swiglu_dequant']} block={r['block_k']} warps={r['num_warps']} "
                  f"stages={r['stages']} hw_cast={r['hw_cast']}: {r['ms']:.4f} ms {r['gb_per_s']:.0f} GB/s")
        if args.use_sweep:
            launch = LaunchConfig.from_table(best)
        result["quant_sweep_winners"] = {f"{k}{'-swiglu' if sw else ''}": list(v) for (k, sw), v in best.items()}
        print("sweep winners (block, warps, stages):", result["quant_sweep_winners"])
        if args.launch_out:
            write_json_atomic(args.launch_out, {"launch": [[k, sw, *v] for (k, sw), v in best.items()]})
    result["quant_launch_used"] = ("sweep winners" if args.use_sweep and not args.no_tune else
                                   "built-in heuristic (kernels.default_launch), hardware e4m3 cast: "
                                   f"{launch.hw_cast_on_cuda}")
    print(f"{'layer':<12} {'M':>6} {'bf16 ms':>8} {'fp8 ms':>8} {'x':>5} {'gemm x':>6} {'quant ms':>8} {'GB/s':>6} "
          f"{'tensorwise x':>12} {'torch-quant x':>13} {'graph x':>7}")
    for name in LAYERS:
        result["layers"][name] = []
        for m in args.tokens:
            row = bench_layer(name, m, launch)
            result["layers"][name].append(row)
            print(f"{name:<12} {m:>6} {row['bf16_ms']:>8.3f} {row['fp8_ms']:>8.3f} {row['speedup_fp8']:>5.2f} "
                  f"{row['speedup_gemm_only_rowwise']:>6.2f} {row['quant_kernel_ms']:>8.3f} "
                  f"{row['quant_kernel_gb_per_s']:>6.0f} {row['speedup_fp8_per_tensor']:>12.2f} "
                  f"{row['speedup_fp8_torch_quant']:>13.2f} {row['speedup_fp8_cudagraph']:>7.2f}")
            write_json_atomic(args.out, result)
    result["layers"]["ffn"] = []
    for m in args.tokens:
        row = bench_ffn(m, launch)
        result["layers"]["ffn"].append(row)
        print(f"ffn M={m}: bf16 {row['bf16_ms']:.3f} ms, fp8 {row['fp8_ms']:.3f} ms ({row['speedup_fp8']:.2f}x), "
              f"fp8 row-wise composed {row['fp8_rowwise_composed_ms']:.3f} ms, rel err {row['rel_err_vs_bf16']:.4f}, "
              f"CUDA graph {row['speedup_fp8_cudagraph']:.2f}x")
        write_json_atomic(args.out, result)
    result["summary"] = {name: {str(r["M"]): round(r["speedup_fp8"], 3) for r in rows}
                         for name, rows in result["layers"].items()}
    result["all_goals_met"] = all(r["meets_goal"] for rows in result["layers"].values() for r in rows)
    write_json_atomic(args.out, result)
    print("speed-ups (fp8 incl. quantization vs bf16):", result["summary"])


if __name__ == "__main__":
    main()
