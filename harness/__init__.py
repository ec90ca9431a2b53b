"""Evaluation and measurement harness for omnigen2_fp8: GEdit-Bench quality, latency, VRAM, kernel profiles, reports."""
