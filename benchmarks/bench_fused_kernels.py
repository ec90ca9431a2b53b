"""Fused FP8 block kernels (omnigen2_fp8/fp8/fused_kernels.py) on a GPU, at the 1024x1024 one-reference edit.

Shape: noisy latent [16, 128, 128] -> 4096 tokens, one reference of the same size -> 4096 tokens, a 200-token
prompt (joint sequence 8392) and a 16-token negative prompt; the full-size DiT with random weights (hidden 2520,
21 / 7 heads of 120). One process, sections in order, the JSON saved after each (a failed section records its
error and the rest go on):

  kernels  each fused kernel against its torch reference on these shapes (hardware e4m3 conversion and the
           interpreter's integer encoder), and its time against the unfused torch ops it replaces
  block    one modulated block, fused vs unfused FP8, eager and compiled
  step     the 3-branch CFG step (cond + ref + uncond passes) eager, fused vs unfused, arms alternating; the
           cond pass's error against the BF16 model; kernel time by category (harness taxonomy) per arm
  compile  the same under regional torch.compile, then compile + CUDA graphs (the pipeline's fastest mode)

The summary gives norm/elementwise + memcpy + quantization as a share of DiT kernel time, before (unfused) and
after (fused), per mode; the issue's target is < 15 % at 1024.

    python -m benchmarks.bench_fused_kernels --out results/fused_kernels_h200.json
    TRITON_INTERPRET=1 python -m benchmarks.bench_fused_kernels --device cpu --preset tiny --out /tmp/f.json
        (a CPU smoke test of this script only: small shapes, interpreted kernels, no meaningful times)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks._common import cuda_kernel_times, run_keeping_partial, sync, time_forward, top_kernels
from benchmarks.bench_fp8_transformer import category_ms
from harness.core.records import run_manifest, write_json_atomic
from omnigen2_fp8 import synthetic
from omnigen2_fp8.cuda_graphs import CudaGraphForward
from omnigen2_fp8.fp8 import Fp8Config, Kernel, fused_kernels, fused_reference, quantize_fp8
from omnigen2_fp8.fp8.dispatch import plan_for, use_plan
from omnigen2_fp8.rope import apply_rotary

OVERHEAD = ("quant", "memcpy", "norm-elementwise")  # the "norm/elementwise + memcpy + quantization"
TARGET_SHARE = 0.15
SECTIONS = ("kernels", "block", "step", "compile")
SIZES = {"omnigen2": dict(latent_side=128, text_tokens=200, negative_tokens=16),
         "tiny": dict(latent_side=8, text_tokens=6, negative_tokens=3)}


# --------------------------------------------------------------------------------------------- comparisons
def ordinal(t: torch.Tensor) -> torch.Tensor:
    """e4m3 / bf16 bit patterns as integers in value order (one step = one ulp)."""
    bits = t.view(torch.uint8).int() if t.element_size() == 1 else t.view(torch.int16).int() & 0xFFFF
    top = 0x80 if t.element_size() == 1 else 0x8000
    return torch.where(bits >= top, -(bits - top), bits)


def agreement(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Largest distance in representable steps and the bit-identical fraction (e4m3 / bf16), or relative error."""
    if got.dtype == torch.float32:
        return {"max_rel_diff": float(((got - want).abs() / want.abs().clamp_min(1e-30)).max())}
    d = (ordinal(got) - ordinal(want)).abs()
    return {"max_steps": int(d.max()), "identical_fraction": float((d == 0).float().mean()),
            "nan": bool(torch.isnan(got.float()).any())}


def rel(a, b) -> float:
    pairs = list(zip(a, b)) if isinstance(a, (list, tuple)) else [(a, b)]
    return max(float((x.float() - y.float()).norm() / y.float().norm()) for x, y in pairs)


def timed_ms(fn, device: str, repeats: int) -> float:
    return time_forward(lambda: fn(), (), device, warmup=3, repeats=repeats)["median_ms"]


# --------------------------------------------------------------------------------------------- kernels
def kernel_inputs(model, tokens: int, device: str) -> dict:
    """Block-shaped inputs: hidden rows, a padded GEMM output, AdaLN modulation, a padded qkv buffer, RoPE."""
    c, block = model.config, model.layers[0]
    g = torch.Generator(device=device).manual_seed(0)
    d, dp = c.hidden_size, block.attn.to_out[0].out_padded
    qkv_padded = block.attn.to_qkv.out_padded
    randn = lambda *shape: torch.randn(*shape, device=device, generator=g, dtype=torch.bfloat16)  # noqa: E731
    mod = randn(1, 4 * d) * 0.3
    angles = torch.rand(1, tokens, c.head_dim // 2, device=device, generator=g) * 100
    return {"x": randn(1, tokens, d) * 4, "y_padded": randn(1, tokens, dp) * 2, "mod": mod,
            "qkv_padded": randn(1, tokens, qkv_padded) * 2, "cos": angles.cos(), "sin": angles.sin()}


def kernel_checks(model, tokens: int, device: str, repeats: int) -> dict:
    """Each fused kernel vs its torch reference (steps, identical fraction, scale error) and vs the unfused ops."""
    block, c = model.layers[0], model.config
    attn, plan = block.attn, block.attn.to_qkv.kernel_plan()
    i = kernel_inputs(model, tokens, device)
    d, kp = c.hidden_size, attn.to_qkv.in_padded
    x, mod, y_padded = i["x"], i["mod"], i["y_padded"]
    scale, gate = mod[:, :d], mod[:, d: 2 * d].float().tanh()
    y = y_padded[..., :d]
    w = block.norm2.weight
    hd, kv = attn.heads * attn.head_dim, attn.kv_heads * attn.head_dim
    q = i["qkv_padded"][..., :hd].unflatten(-1, (attn.heads, attn.head_dim))
    k = i["qkv_padded"][..., hd: hd + kv].unflatten(-1, (attn.kv_heads, attn.head_dim))
    descales = (torch.full((1, 1, 1, 1), 0.02, device=device), torch.full((1, 1, 1, 1), 0.03, device=device), 128)
    rope_args = (q, k, attn.norm_q.weight, attn.norm_k.weight, i["cos"], i["sin"], 1e-5, 1e-5)
    cases = {
        "modulated_rmsnorm_quant": ((x, w, scale, 1e-5, kp), fused_kernels.modulated_rmsnorm_quant_triton,
                                    fused_reference.modulated_rmsnorm_quant),
        "gated_residual_rmsnorm": ((x, y, gate, w, 1e-5), fused_kernels.gated_residual_rmsnorm_triton,
                                   fused_reference.gated_residual_rmsnorm),
        "gated_residual_rmsnorm_quant": ((x, y, gate, w, 1e-5, w, scale, 1e-5, kp),
                                         fused_kernels.gated_residual_rmsnorm_quant_triton,
                                         fused_reference.gated_residual_rmsnorm_quant),
        "qk_norm_rope": (rope_args, fused_kernels.qk_norm_rope_triton, fused_reference.qk_norm_rope),
        "qk_norm_rope_fp8": ((*rope_args, *descales), fused_kernels.qk_norm_rope_triton,
                             fused_reference.qk_norm_rope),
    }
    unfused = unfused_equivalents(block, plan, x, y_padded, scale, mod[:, d: 2 * d], q, k, i, kp)
    out = {"tokens": tokens}
    with torch.inference_mode():
        for name, (args, kernel, reference) in cases.items():
            want = reference(*args)
            want = want if isinstance(want, tuple) else (want,)
            row = {}
            encoders = (("hw_cast", True), ("int_encoder", False)) if x.is_cuda else (("int_encoder", False),)
            for label, hw in encoders:
                got = kernel(*args, hw_cast=hw)
                got = got if isinstance(got, tuple) else (got,)
                row[label] = [agreement(g_, w_) for g_, w_ in zip(got, want)]
            row["fused_ms"] = timed_ms(lambda: kernel(*args), device, repeats)
            if name in unfused:
                row["unfused_ms"] = timed_ms(unfused[name], device, repeats)
                row["speedup"] = row["unfused_ms"] / row["fused_ms"]
            out[name] = row
    return out


def unfused_equivalents(block, plan, x, y_padded, scale, gate_raw, q, k, i, kp) -> dict:
    """The torch ops (and the plan's quantization kernel) the unfused FP8 block runs for each fused kernel."""
    n, seq, d = x.shape
    attn, ff1 = block.attn, block.ffn_norm1

    def modulated():
        return plan.quantize((block.norm1.norm(x) * (1 + scale.unsqueeze(1))).reshape(-1, d), kp, True)

    def residual():  # Fp8Linear.finish's slicing copy, norm2, tanh gate, residual add
        y = y_padded.reshape(-1, y_padded.shape[-1])[:, :d].reshape(n, seq, d)
        return x + gate_raw.unsqueeze(1).tanh() * block.norm2(y)

    def residual_quant():
        h = residual()
        return h, plan.quantize((ff1(h) * (1 + scale.unsqueeze(1))).reshape(-1, d), kp, True)

    def qk():  # the qkv slicing copy, then per-head norms and the complex RoPE
        width = (attn.heads + 2 * attn.kv_heads) * attn.head_dim
        qkv = i["qkv_padded"].reshape(n * seq, -1)[:, :width].reshape(n, seq, width)
        hd, kv = attn.heads * attn.head_dim, attn.kv_heads * attn.head_dim
        qq = attn.norm_q(qkv[..., :hd].unflatten(-1, (attn.heads, attn.head_dim)))
        kk = attn.norm_k(qkv[..., hd: hd + kv].unflatten(-1, (attn.kv_heads, attn.head_dim)))
        return apply_rotary(qq, i["cos"], i["sin"]), apply_rotary(kk, i["cos"], i["sin"])

    return {"modulated_rmsnorm_quant": modulated, "gated_residual_rmsnorm": residual,
            "gated_residual_rmsnorm_quant": residual_quant, "qk_norm_rope": qk}


# --------------------------------------------------------------------------------------------- block / step
PLANS = {"fused": plan_for(Kernel.CUBLAS_PADDED, fused_block=True),
         "unfused": plan_for(Kernel.CUBLAS_PADDED, fused_block=False)}


def block_timings(model, tokens: int, device: str, repeats: int, compiled: bool) -> dict:
    """One modulated main block at the joint length, fused vs unfused (ms, median)."""
    block = copy.deepcopy(model.layers[0])
    c = model.config
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, tokens, c.hidden_size, device=device, generator=g, dtype=torch.bfloat16)
    angles = torch.rand(1, tokens, c.head_dim // 2, device=device, generator=g) * 100
    temb = torch.randn(1, c.temb_dim, device=device, generator=g, dtype=torch.bfloat16)
    inputs = (x, None, angles.cos(), angles.sin(), temb)
    out = {}
    if compiled:
        block.compile(dynamic=True)
    for name, plan in PLANS.items():
        use_plan(block, plan)
        out[f"{name}_ms"] = time_forward(block, inputs, device, warmup=3, repeats=repeats)["median_ms"]
    out["speedup"] = out["unfused_ms"] / out["fused_ms"]
    return out


def step_inputs(model, size: dict, device: str) -> list[tuple]:
    """The three CFG passes of one step: (latents, t, text, mask, refs) for cond, ref and uncond."""
    c, side = model.config, size["latent_side"]
    g = torch.Generator(device=device).manual_seed(0)
    bf16 = dict(device=device, generator=g, dtype=torch.bfloat16)
    latents = torch.randn(1, c.in_channels, side, side, **bf16)
    refs = [[torch.randn(c.in_channels, side, side, **bf16)]]
    prompt = torch.randn(1, size["text_tokens"], c.text_feat_dim, **bf16)
    negative = torch.randn(1, size["negative_tokens"], c.text_feat_dim, **bf16)
    t = torch.full((1,), 0.5, device=device, dtype=torch.bfloat16)
    ones = lambda n: torch.ones(1, n, dtype=torch.long)  # noqa: E731  (CPU masks: no device sync)
    return [(latents, t, prompt, ones(size["text_tokens"]), refs),
            (latents, t, negative, ones(size["negative_tokens"]), refs),
            (latents, t, negative, ones(size["negative_tokens"]), None)]


def three_branch_step(fn, passes) -> list[torch.Tensor]:
    return [fn(lat, t, text, mask, ref_latents=refs) for lat, t, text, mask, refs in passes]


def time_arms(arms: dict, passes, device: str, rounds: int, steps: int) -> dict:
    """Per-step ms of each arm (callable, plan), arms alternating round by round; median over rounds."""
    times = {name: [] for name in arms}
    with torch.inference_mode():
        for name, (fn, plan) in arms.items():  # warm-up: compile / capture happens here, timed separately
            use_plan(fn.model if isinstance(fn, CudaGraphForward) else fn, plan)
            start = time.perf_counter()
            three_branch_step(fn, passes)
            three_branch_step(fn, passes)
            sync(device)
            times[f"{name}_warmup_s"] = time.perf_counter() - start
        for r in range(rounds):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                fn, plan = arms[name]
                use_plan(fn.model if isinstance(fn, CudaGraphForward) else fn, plan)
                sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    three_branch_step(fn, passes)
                sync(device)
                times[name].append((time.perf_counter() - start) / steps * 1e3)
    out = {}
    for name in arms:
        rounds_ms = sorted(times[name])
        out[name] = {"step_ms": rounds_ms[len(rounds_ms) // 2], "step_ms_rounds": times[name],
                     "warmup_s": times[f"{name}_warmup_s"]}
    if "fused" in out and "unfused" in out:
        out["speedup"] = out["unfused"]["step_ms"] / out["fused"]["step_ms"]
    return out


def profile_step(model, plan, passes, device: str) -> dict:
    """Kernel time of one 3-branch step by category (harness.profile.taxonomy, by kernel name)."""
    from torch.profiler import ProfilerActivity, profile

    use_plan(model, plan)
    with torch.inference_mode():
        three_branch_step(model, passes)
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            three_branch_step(model, passes)
            sync(device)
    per_kernel = cuda_kernel_times(prof)
    categories = category_ms({name: ms for name, (_, ms) in per_kernel.items()})
    total = sum(categories.values())
    overhead = sum(categories[c] for c in OVERHEAD)
    return {"kernel_ms": total, "categories_ms": categories,
            "overhead_share": overhead / total if total else None,
            "overhead_plus_other_share": (overhead + categories["other"]) / total if total else None,
            "top_kernels": top_kernels(per_kernel, 25)}


# --------------------------------------------------------------------------------------------- run
class Sections:
    """Runs named sections in order; a failure is recorded (with its traceback) and the next section runs."""

    def __init__(self, record: dict, save):
        self.record, self.save = record, save

    @contextlib.contextmanager
    def section(self, name: str):
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            yield
        except Exception as err:  # one broken section must not cost the others' numbers
            self.record.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"
            self.record.setdefault("tracebacks", {})[name] = traceback.format_exc()
            print(f"  FAILED {name}: {err}\n{traceback.format_exc()}", flush=True)
        self.record.setdefault("section_seconds", {})[name] = time.perf_counter() - start
        self.save()


def run(args, record: dict) -> None:
    save = lambda: write_json_atomic(args.out, record)  # noqa: E731
    runner = Sections(record, save)
    torch._dynamo.config.recompile_limit = 64  # two plans x two block kinds share TransformerBlock.forward
    size = SIZES[args.preset]
    start = time.perf_counter()
    model = synthetic.build_transformer("full" if args.preset == "omnigen2" else "tiny", args.device,
                                        torch.bfloat16, seed=0)
    passes = step_inputs(model, size, args.device)
    joint = size["text_tokens"] + 2 * (size["latent_side"] // 2) ** 2
    record["shape"] = {**size, "joint_tokens": joint, "hidden": model.config.hidden_size,
                       "heads": [model.config.num_attention_heads, model.config.num_kv_heads],
                       "head_dim": model.config.head_dim}
    with torch.inference_mode():
        bf16_cond = model(*passes[0][:4], ref_latents=passes[0][4])
    report = quantize_fp8(model, Fp8Config())
    record["fp8"] = {"fused_blocks": len(report.fused_blocks), "notes": report.notes,
                     "quantized_layers": len(report.quantized)}
    record["build_s"] = time.perf_counter() - start
    save()
    sections, modes = set(args.sections), record.setdefault("modes", {})
    if "kernels" in sections:
        with runner.section("kernels"):
            record["kernels"] = kernel_checks(model, joint, args.device, args.repeats)
    if "block" in sections:
        with runner.section("block"):
            record["block"] = {"eager": block_timings(model, joint, args.device, args.repeats, compiled=False)}
        with runner.section("block_compiled"):
            record["block"]["compiled"] = block_timings(model, joint, args.device, args.repeats, compiled=True)
    if "step" in sections:
        with runner.section("step_eager"):
            with torch.inference_mode():
                record["accuracy_vs_bf16"] = {}
                for name, plan in PLANS.items():
                    use_plan(model, plan)
                    record["accuracy_vs_bf16"][f"{name}_cond_velocity_rel_err"] = rel(
                        model(*passes[0][:4], ref_latents=passes[0][4]), bf16_cond)
            modes["eager"] = time_plans(model, passes, args)
        if args.device.startswith("cuda"):
            with runner.section("profile_eager"):
                modes["eager"]["profiles"] = profile_plans(model, passes, args.device)
    if "compile" in sections:
        with runner.section("step_compile"):
            model.compile_blocks()
            modes["compile"] = time_plans(model, passes, args)
        if args.device.startswith("cuda"):
            with runner.section("profile_compile"):
                modes["compile"]["profiles"] = profile_plans(model, passes, args.device)
            with runner.section("step_compile_graphs"):
                arms = {n: (CudaGraphForward(model), p) for n, p in PLANS.items()}
                modes["compile+graphs"] = time_arms(arms, passes, args.device, args.rounds, args.steps)
                for name, (wrapper, _) in arms.items():
                    modes["compile+graphs"][name]["graph_replays"] = wrapper.replays
                    modes["compile+graphs"][name]["graphs_disabled"] = wrapper.disabled_reason
    record["summary"] = summary(record)
    record["seconds"] = time.perf_counter() - start
    save()


def time_plans(model, passes, args) -> dict:
    """The 3-branch step of `model` under every plan of PLANS, arms alternating (time_arms)."""
    return time_arms({n: (model, p) for n, p in PLANS.items()}, passes, args.device, args.rounds, args.steps)


def profile_plans(model, passes, device: str) -> dict:
    """One profiled step of `model` under every plan of PLANS (kernel time by category)."""
    return {n: profile_step(model, p, passes, device) for n, p in PLANS.items()}


def summary(record: dict) -> dict:
    """Per mode: step ms fused / unfused, speed-up, overhead share before -> after, and the target check."""
    out = {"target_overhead_share": TARGET_SHARE}
    for mode, result in record.get("modes", {}).items():
        row = {k: result[k]["step_ms"] for k in ("fused", "unfused") if k in result}
        row["speedup"] = result.get("speedup")
        for name, prof in result.get("profiles", {}).items():
            row[f"{name}_overhead_share"] = prof["overhead_share"]
        if row.get("fused_overhead_share") is not None:
            row["meets_target"] = row["fused_overhead_share"] < TARGET_SHARE
        out[mode] = row
    return out


def default_out(device: str) -> Path:
    name = torch.cuda.get_device_name().split()[-1].lower() if device.startswith("cuda") else "cpu"
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("results")
    return folder / f"fused_kernels_{name}.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: $OUT or results/, "
                        "fused_kernels_<gpu>.json)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (arms alternate)")
    parser.add_argument("--steps", type=int, default=2, help="3-branch steps per timed round")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per kernel / block measurement")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", choices=sorted(SIZES), default="omnigen2",
                        help="tiny: a CPU smoke test of this script (with TRITON_INTERPRET=1)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; the timings mean something on a GPU only (TRITON_INTERPRET=1 with "
                     "--device cpu --preset tiny smoke-tests the script)")
    if not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("on a CPU the Triton kernels run only in the interpreter: set TRITON_INTERPRET=1")
    args.out = args.out or default_out(args.device)
    record = {"manifest": run_manifest(synthetic="full" if args.preset == "omnigen2" else args.preset,
                                       device=args.device, extra={"benchmark": "fused fp8 block kernels"}),
              "settings": {"rounds": args.rounds, "steps": args.steps, "repeats": args.repeats,
                           "sections": args.sections, "overhead_categories": list(OVERHEAD)}}
    run_keeping_partial(lambda: run(args, record), record, args.out)
    print("summary:", record.get("summary"), "\nerrors:", list(record.get("errors", {})), f"\nwrote {args.out}")
    return 1 if record.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
