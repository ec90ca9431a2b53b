"""The harness's one vocabulary: stage names and labels, kernel categories and colours, GEdit metric names.

Every table, figure and record of the harness spells these the same way; nothing else defines them.
(The library keeps its own console labels in omnigen2_fp8/edit.py: it imports nothing from the harness.)
"""
from __future__ import annotations

# Pipeline stages as the stage timers name them (omnigen2_fp8.pipeline.STAGES), plus one denoising step.
STEP_STAGE = "denoise_step"
PIPELINE_STAGES = ("text_encode", "vae_encode", "prepare_latents", "denoise", "vae_decode")
# The stages the profile tables show, in pipeline order.
REPORTED_STAGES = ("text_encode", "vae_encode", "denoise", STEP_STAGE, "vae_decode")
END_TO_END = "end_to_end"
STAGE_LABELS = {
    END_TO_END: "end to end",
    "text_encode": "MLLM encode",
    "vae_encode": "VAE encode",
    "prepare_latents": "prepare latents",
    "denoise": "denoise (total)",
    STEP_STAGE: "one denoise step",
    "vae_decode": "VAE decode",
    "postprocess": "postprocess",
}

# Kernel categories of a profiled denoising step, in table and stacking order (rules: harness/profile/taxonomy.py).
KERNEL_CATEGORIES = ("gemm-fp8", "gemm-bf16", "attention", "quant", "memcpy", "norm-elementwise", "other")
CATEGORY_COLORS = {
    "gemm-fp8": "#DD8452", "gemm-bf16": "#4C72B0", "attention": "#55A868", "quant": "#C44E52",
    "memcpy": "#937860", "norm-elementwise": "#8172B3", "other": "#BBBBBB",
}

# GEdit-Bench judge metrics as upstream names them: semantic consistency, perceptual quality, overall (0-10).
METRICS = ("Q_SC", "Q_PQ", "Q_O")
OVERALL_METRIC = "Q_O"
METRIC_LABELS = {m: m for m in METRICS}  # records and tables use the same names


def stage_label(stage: str) -> str:
    """The table label of a stage (the name itself for a stage the vocabulary does not know)."""
    return STAGE_LABELS.get(stage, stage)
