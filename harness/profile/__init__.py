"""python -m harness.profile: latency, VRAM and kernel breakdowns of OmniGen2 edits, BF16 vs FP8, side by side.

    python -m harness.profile --precision bf16 fp8 --scenario edit-1024-1ref --synthetic full --out results/profile/x
    python -m harness.profile --precision bf16 fp8 --scenario gedit-512 --model OmniGen2/OmniGen2 --repeats 5
    python -m harness.profile --precision bf16 fp8 --fp8-no-pad --scenario gedit-512 --synthetic full --steps 4
    python -m harness.profile --precision bf16 fp8 --scenario gedit-512 --synthetic full --eager   # today's eager path

An arm is a precision recipe (`omnigen2_fp8.precision`: bf16, fp8, fp8-nopad, plus accelerations such as
fp8+teacache); `--fp8-kernel` sets the FP8 GEMM kernel of every FP8 arm.

Mode (`--mode`, `omnigen2_fp8.modes`): by default (`auto`) every arm runs the fastest mode on CUDA, compile+graphs
(regional torch.compile, each CFG branch's pass replayed as a CUDA graph; a TeaCache arm replays the main stack of
its computed calls), and an arm whose weights are offloaded runs compiled without graphs, the reason recorded;
eager on a CPU. `--eager` or an explicit
`--mode` applies to every arm. Each arm's mode is in profile.json (`arms.<arm>.mode`) and profile.md. Eager FP8
is slower than eager BF16 at the 512 GEdit shape (launch-bound), so an eager default would mislead.

Method (profile.md and profile.json repeat it):
1. Load. The MLLM, the VAE and the tokenizer are loaded once (one `omnigen2_fp8.checkpoints.Components`) and
   shared by every arm. Each arm gets its own transformer and its pipeline from the library by recipe name: BF16 as
   loaded; FP8 loaded in BF16 and quantized in place by the pipeline (so the FP8 arm never keeps a BF16 copy, but
   its load peak is BF16-sized); `fp8-nopad` quantized without padding (see below).
   Each load is a memory phase of its own (gc + empty_cache + reset_peak_memory_stats before it), and after
   loading, the transformer is parked on the CPU so the next arm's load starts from the shared components only.
2. Memory run. For each arm in turn, only its transformer is on the GPU (the others are parked on the CPU), the
   allocator is emptied and the peak counters reset, and the first warm-up call is the memory measurement: its
   peak allocated / reserved (the pipeline resets the counters per stage; the call's peak is the max over stages)
   can hold nothing of another arm. That first call also compiles and captures: its wall time minus a timed call is
   the arm's `startup` (reported on its own row, never inside a latency). Then, with every transformer back on the
   GPU, the remaining warm-up calls (at least one for a graph arm: moving the weights made its graphs stale).
3. Timing. `--repeats` rounds, each running every arm once in the same order (ABAB...), so drift of clocks or
   temperature hits every arm alike. End to end: perf_counter between two synchronisations. Stages: CUDA events
   per stage and per denoising step (harness.core.timing.StageTimer); each transformer call: CUDA events around it,
   read after the closing synchronise, and classed computed / cached by the step cache's record of the call.
   Each arm's first timed edit is saved as `edits/<arm>.png` and compared with the first arm's (same seed, prompt
   and references): PSNR / SSIM in profile.json (`arms.<arm>.fidelity`) and profile.md, what the arm's precision
   or acceleration did to the output, with no judge.
4. Profile (after timing, so the profiler never perturbs the timings): one call per arm with `--profile-steps`
   denoising steps under torch.profiler, with a `layer::<name>` range around every linear of the transformer
   (`omnigen2_fp8.profiling.layer_ranges`; not inside compiled blocks); the kernel tables cover the denoising steps;
   per-stage kernel sums cover every stage. CUDA graph replays are paused for this call (the profiler cannot tie a
   replayed graph's kernels to their ops and layers): a compile+graphs arm is profiled compiled. A compiled FP8 arm's
   fallback check reads a second call, the same model forced eager, which carries the layer ranges.

`fp8-nopad` (`--fp8-no-pad`, `Fp8Config(misaligned="reference")`) is the deliberately unpadded arm: e4m3 weights
with K and N as they are (2520, 840 and 10240 x 2520 are not all multiples of 16). cuBLASLt's FP8 GEMM refuses such
shapes, so, as in vLLM, the layers whose shapes it would refuse run a fallback GEMM (here the torch-reference path:
dequantize and a high precision matmul); the fallback detector must flag them. Layers whose shapes are aligned keep
the fast kernel.
"""
