"""The fused kernels of the FP8 block (fp8/fused_kernels.py: modulated norm -> e4m3, gated residual + norm,
gated residual + norm -> e4m3, QK-norm + RoPE) against what the compiled unfused block runs in their place:
inductor's fused norm / modulation / residual kernel writing BF16, then the row quantization kernel reading it
back; for QK-norm + RoPE inductor's fusion of the per-head RMSNorm and the rotation.

Per op and token count: GPU time per call of the unfused ops under torch.compile, and of the fused kernel for a
sweep of launches (`fused_kernels.RowLaunch`: whole rows in registers, several per program, the chunked kernel, or
the resident kernel with or without prefetching the next row; `fused_kernels.RopeLaunch`: tokens per program,
warps). Times are CUDA graphs of `--calls` back-to-back calls
replayed `--rounds` times (no launch overhead, as in the pipeline's fastest mode), median per call. Each fused
result is compared with its torch reference before it is timed (`agreement_with_reference`, per output).

The row quantization kernel (kernels.py) is swept too, on to_out's input [tokens, 2520] and on the SwiGLU rows
[tokens, 2 x 10240] of the gate/up GEMM (its `unfused_compiled_ms` is a plain copy of that input). Every op but
QK-norm + RoPE reports the bandwidth it reaches (the least bytes it moves over its time) beside a plain copy's.

Shapes: hidden 2520, e4m3 rows padded to 2528, branch outputs read through the 2528-wide rows of a padded GEMM
output, q and k (21 and 7 heads of 120) through the rows of a padded qkv output; 8392 tokens = the cond pass of
the 1024 one-reference edit, 4204 = its uncond pass, 2245 = the 512 GEdit shape.

    python -m benchmarks.bench_row_kernels --out results/row_kernels_h200.json
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import cuda_event_ms
from benchmarks.bench_fused_kernels import agreement
from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8.fp8 import Kernel, fused_kernels as K, fused_reference as R, kernels as KQ, primitives as P
from omnigen2_fp8.fp8.dispatch import plan_for
from omnigen2_fp8.rope import rotate_pairs_real

D, KP = 2520, 2528
FF = 10240  # the feed-forward's inner width: the SwiGLU rows are [gate | up] = 2 x 10240
EPS = 1e-6
OPS = ("modulated_rmsnorm_quant", "gated_residual_rmsnorm", "gated_residual_rmsnorm_quant")
QUANT_OPS = ("quantize_rows", "quantize_swiglu_rows")  # to_out's input; the down projection's input
# A whole-row launch, the best chunked launches of results/row_kernels_h200.json, then the resident kernel (each row
# in registers as five chunks of 512 lanes, the per-sample vectors loaded once for 1 to 16 rows), then the resident
# kernel loading the next row while it computes this one.
SWEEP = ([K.RowLaunch(8, 2, 8)]
         + [K.RowLaunch(sub, sub, warps, chunk) for sub, warps, chunk in ((1, 2, 256), (1, 4, 256), (1, 4, 512),
                                                                          (2, 4, 256))]
         + [K.RowLaunch(rows, 1, warps, resident=True) for rows, warps in itertools.product((1, 4, 8, 16), (2, 4, 8))]
         + [K.RowLaunch(rows, 1, warps, resident=True, prefetch=True)
            for rows, warps in itertools.product((4, 8, 16), (2, 4, 8))])
# (block_k, num_warps, stages) of the row quantization kernel: the default, then resident chunks (stages RESIDENT)
QUANT_SWEEP = {"quantize_rows": [(b, w, KQ.RESIDENT) for b, w in ((512, 1), (512, 2), (512, 4), (1024, 2), (1024, 4),
                                                                 (1024, 8))],
               "quantize_swiglu_rows": [(b, w, KQ.RESIDENT) for b, w in ((2048, 4), (2048, 8), (2048, 16), (4096, 8),
                                                                        (4096, 16))]}
HEADS, KV_HEADS, HEAD_DIM = 21, 7, 120
ROPE_SWEEP = [K.RopeLaunch(tokens, warps) for tokens, warps in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8))]


def inputs(tokens: int, device: str) -> dict:
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=g, dtype=torch.bfloat16)

    mod = randn(1, 4 * D) * 0.3  # AdaLN output: [scale_msa | gate_msa | scale_mlp | gate_mlp] as strided views
    return {"h": randn(1, tokens, D) * 4, "y": (randn(1, tokens, KP) * 2)[..., :D], "scale": mod[:, :D],
            "gate_raw": mod[:, D: 2 * D], "gate": mod[:, D: 2 * D].float().tanh(), "w": randn(D) * 0.1 + 1,
            "nw": randn(D) * 0.1 + 1}


def rope_inputs(tokens: int, device: str) -> dict:
    """q and k as strided views of a padded qkv GEMM output [1, L, 4208], the cos/sin rows, the head norms."""
    g = torch.Generator(device=device).manual_seed(0)
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    qkv = torch.randn(1, tokens, width + 8, device=device, generator=g, dtype=torch.bfloat16)[..., :width] * 3
    angles = torch.rand(1, tokens, HEAD_DIM // 2, device=device, generator=g) * 50
    return {"q": qkv[..., : HEADS * HEAD_DIM].unflatten(-1, (HEADS, HEAD_DIM)),
            "k": qkv[..., HEADS * HEAD_DIM: (HEADS + KV_HEADS) * HEAD_DIM].unflatten(-1, (KV_HEADS, HEAD_DIM)),
            "cos": angles.cos(), "sin": angles.sin(),
            "wq": torch.rand(HEAD_DIM, device=device, generator=g).bfloat16() + 0.5,
            "wk": torch.rand(HEAD_DIM, device=device, generator=g).bfloat16() + 0.5}


def rope_unfused(i: dict):
    """What the unfused attention runs under torch.compile: the per-head RMSNorm modules (BF16 out), then the real
    form of the rotation; inductor fuses them (here writing contiguous q and k)."""
    def qk(q, k, wq, wk, cos, sin):
        return (rotate_pairs_real(F.rms_norm(q, (HEAD_DIM,), wq, 1e-5), cos, sin),
                rotate_pairs_real(F.rms_norm(k, (HEAD_DIM,), wk, 1e-5), cos, sin))

    compiled = torch.compile(qk, dynamic=False)
    return lambda: compiled(i["q"], i["k"], i["wq"], i["wk"], i["cos"], i["sin"])


def rope_args(i: dict) -> tuple:
    return i["q"], i["k"], i["wq"], i["wk"], i["cos"], i["sin"], 1e-5, 1e-5


def rope_row(tokens: int, calls: int, rounds: int) -> dict:
    i = rope_inputs(tokens, "cuda")
    want = R.qk_norm_rope(*rope_args(i))
    row = {"unfused_compiled_ms": graph_ms(rope_unfused(i), calls, rounds), "fused": []}
    for launch in ROPE_SWEEP:
        fn = lambda launch=launch: K.qk_norm_rope_triton(*rope_args(i), launch=launch)  # noqa: E731
        row["fused"].append({"launch": [launch.tokens_per_program, launch.num_warps],
                             "agreement_with_reference": agreements(fn(), want), "ms": graph_ms(fn, calls, rounds)})
    default = K.default_rope_launch(tokens)
    row["default_launch"] = [default.tokens_per_program, default.num_warps]
    row["default_ms"] = graph_ms(lambda: K.qk_norm_rope_triton(*rope_args(i)), calls, rounds)
    return row


def unfused(op: str, i: dict):
    """The compiled unfused block's pieces for `op`: inductor-fused torch ops, then the quantization custom op."""
    plan = plan_for(Kernel.CUBLAS_PADDED)

    def norm(x, w):
        return F.rms_norm(x, (D,), w, EPS)

    def modulated(h, scale, w):
        return plan.quantize((norm(h, w) * (1 + scale.unsqueeze(1))).reshape(-1, D), KP, True)

    def residual(h, y, gate_raw, w):
        return h + gate_raw.unsqueeze(1).tanh() * norm(y, w)

    def residual_quant(h, y, gate_raw, w, nw, scale):
        new = residual(h, y, gate_raw, w)
        return new, plan.quantize((norm(new, nw) * (1 + scale.unsqueeze(1))).reshape(-1, D), KP, True)

    fn, args = {"modulated_rmsnorm_quant": (modulated, ("h", "scale", "w")),
                "gated_residual_rmsnorm": (residual, ("h", "y", "gate_raw", "w")),
                "gated_residual_rmsnorm_quant": (residual_quant, ("h", "y", "gate_raw", "w", "nw", "scale"))}[op]
    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(*(i[a] for a in args))


def fused(op: str, i: dict, launch):
    if op == "modulated_rmsnorm_quant":
        return lambda: K.modulated_rmsnorm_quant_triton(i["h"], i["w"], i["scale"], EPS, KP, launch=launch)
    if op == "gated_residual_rmsnorm":
        return lambda: K.gated_residual_rmsnorm_triton(i["h"], i["y"], i["gate"], i["w"], EPS, launch=launch)
    return lambda: K.gated_residual_rmsnorm_quant_triton(i["h"], i["y"], i["gate"], i["w"], EPS, i["nw"], i["scale"],
                                                         EPS, KP, launch=launch)


def reference(op: str, i: dict):
    if op == "modulated_rmsnorm_quant":
        return R.modulated_rmsnorm_quant(i["h"], i["w"], i["scale"], EPS, KP)
    if op == "gated_residual_rmsnorm":
        return R.gated_residual_rmsnorm(i["h"], i["y"], i["gate"], i["w"], EPS)
    return R.gated_residual_rmsnorm_quant(i["h"], i["y"], i["gate"], i["w"], EPS, i["nw"], i["scale"], EPS, KP)


def agreements(got, want) -> list[dict]:
    """`bench_fused_kernels.agreement` of each output (e4m3 / bf16: steps and identical fraction; scales: relative)."""
    pairs = zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,))
    return [agreement(a, b) for a, b in pairs]


def worst_steps(rows: list[dict]) -> int:
    return max(r["max_steps"] for r in rows if "max_steps" in r)


def graph_ms(fn, calls: int, rounds: int) -> float:
    """Median GPU ms per call of `calls` back-to-back calls captured in one CUDA graph."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return cuda_event_ms(graph.replay, warmup=1, repeats=rounds) / calls


def op_bytes(op: str, tokens: int) -> int:
    """Bytes an op must move at least (each input read once, each output written once): the TB/s figures."""
    row_bf16, row_q = 2 * D, KP + 4
    per_row = {"modulated_rmsnorm_quant": row_bf16 + row_q, "gated_residual_rmsnorm": 3 * row_bf16,
               "gated_residual_rmsnorm_quant": 3 * row_bf16 + row_q, "quantize_rows": row_bf16 + row_q,
               "quantize_swiglu_rows": 2 * 2 * FF + FF + 4, "copy": 2 * row_bf16}[op]
    return tokens * per_row


def launch_name(launch: K.RowLaunch) -> list:
    return [launch.rows_per_program, launch.sub_rows, launch.num_warps, launch.chunk,
            ("resident+prefetch" if launch.prefetch else "resident") if launch.resident else "passes"]


def row_kernel_row(op: str, tokens: int, calls: int, rounds: int) -> dict:
    i = inputs(tokens, "cuda")
    row = {"unfused_compiled_ms": graph_ms(unfused(op, i), calls, rounds), "fused": []}
    want = reference(op, i)
    for launch in SWEEP:
        fn = fused(op, i, launch)
        row["fused"].append({"launch": launch_name(launch), "agreement_with_reference": agreements(fn(), want),
                             "ms": graph_ms(fn, calls, rounds)})
    row["default_launch"] = launch_name(K.default_row_launch(4096, tokens, op != "gated_residual_rmsnorm",
                                                              op != "modulated_rmsnorm_quant"))
    row["default_ms"] = graph_ms(fused(op, i, None), calls, rounds)
    return row


def quant_row(op: str, tokens: int, calls: int, rounds: int) -> dict:
    """The row quantization kernel (kernels.py) on to_out's input [tokens, 2520] or the SwiGLU rows [tokens, 2 x
    10240] of a gate/up GEMM output; `unfused_compiled_ms` is a plain copy of the same input (no inductor fusion
    to compare with: these are what the GEMMs leave behind)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    swiglu = op == "quantize_swiglu_rows"
    width, k_padded = (2 * FF, FF) if swiglu else (D, KP)
    x = torch.randn(tokens, width, device="cuda", generator=g, dtype=torch.bfloat16) * 3
    want = P.quantize_activation(x, k_padded, True, swiglu)
    row = {"unfused_compiled_ms": copy_ms(x, calls, rounds), "fused": []}
    default = KQ.DEFAULT_LAUNCH.choose(k_padded if swiglu else D, k_padded, swiglu)
    for block, warps, stages in [default, *QUANT_SWEEP[op]]:
        fn = lambda b=block, w=warps, st=stages: KQ.quantize_activation_triton(  # noqa: E731
            x, k_padded, True, swiglu, block_k=b, num_warps=w, stages=st)
        row["fused"].append({"launch": [block, warps, stages], "agreement_with_reference": agreements(fn(), want),
                             "ms": graph_ms(fn, calls, rounds)})
    row["default_launch"] = list(default)
    row["default_ms"] = row["fused"][0]["ms"]
    return row


def copy_ms(x: torch.Tensor, calls: int, rounds: int) -> float:
    """A device-to-device copy of `x`: the bandwidth a streaming kernel can reach here."""
    y = torch.empty_like(x)
    return graph_ms(lambda: y.copy_(x), calls, rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8392, 4204, 2245])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", nargs="+", choices=(*OPS, *QUANT_OPS, "qk_norm_rope"),
                        default=[*OPS, *QUANT_OPS, "qk_norm_rope"])
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    record = {"note": args.note, "manifest": run_manifest(synthetic="random inputs", device="cuda",
                                                          extra={"benchmark": "fused row kernels vs compiled ops"}),
              "settings": {"hidden": D, "k_padded": KP, "calls": args.calls, "rounds": args.rounds}, "results": {}}
    copy_tb_per_s = {}  # per token count, measured once (the same copy for every op)
    with torch.inference_mode():
        for tokens, op in itertools.product(args.tokens, args.ops):
            if op == "qk_norm_rope":
                row = rope_row(tokens, args.calls, args.rounds)
            elif op in QUANT_OPS:
                row = quant_row(op, tokens, args.calls, args.rounds)
            else:
                row = row_kernel_row(op, tokens, args.calls, args.rounds)
            best = min(row["fused"], key=lambda r: r["ms"])
            row["best"] = best
            if op != "qk_norm_rope":  # achieved bandwidth: the least bytes the op moves over its time
                row["bytes"] = op_bytes(op, tokens)
                row["best_tb_per_s"] = row["bytes"] / best["ms"] / 1e9
                row["default_tb_per_s"] = row["bytes"] / row["default_ms"] / 1e9
                if tokens not in copy_tb_per_s:
                    rows = torch.randn(tokens, D, device="cuda", dtype=torch.bfloat16)  # [tokens, 2520] BF16
                    copy_tb_per_s[tokens] = op_bytes("copy", tokens) / copy_ms(rows, args.calls, args.rounds) / 1e9
                row["copy_tb_per_s"] = copy_tb_per_s[tokens]
            row["best_speedup_over_unfused"] = row["unfused_compiled_ms"] / best["ms"]
            row["default_speedup_over_unfused"] = row["unfused_compiled_ms"] / row["default_ms"]
            record["results"][f"{op}@{tokens}"] = row
            bandwidth = f", {row['best_tb_per_s']:.2f} TB/s (copy {row['copy_tb_per_s']:.2f})" if "bytes" in row else ""
            print(f"{op:30s} {tokens:5d} tokens: unfused {row['unfused_compiled_ms']:.4f} ms, fused default "
                  f"{row['default_ms']:.4f} ms, best {best['ms']:.4f} ms {best['launch']} "
                  f"(steps {worst_steps(best['agreement_with_reference'])}){bandwidth}", flush=True)
            write_json_atomic(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
