#!/usr/bin/env bash
# The full-size synthetic runs behind results/example-h100-synthetic (H100, random weights: latency and memory are
# real, images and scores are not). Usage: OUT=/some/dir bash benchmarks/device_example_runs.sh [gedit] [profile2ref]
# Each part writes a tarball of its run folder (large images and model files excluded) into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
W=${WORK:-/tmp/example-runs}
mkdir -p "$W/runs" "$OUT"
for part in "$@"; do
  case "$part" in
    gedit)  # 11 task groups x 1 sample, English, 512x512, 20 steps, both arms, full-size random judge
      timeout 420 python3 -m harness.gedit --synthetic full --task gedit-en-10pct --per-task 1 \
        --out "$W/runs/gedit-synthetic-full" --no-progress 2>&1 | tail -40
      tar -C "$W/runs" -czf "$OUT/gedit-synthetic-full.tgz" gedit-synthetic-full ;;
    profile2ref)  # issue 3's second 1024x1024 shape: two 1024x1024 references, 28 steps, 3-branch CFG
      timeout 300 python3 -m harness.profile --synthetic full --scenario edit-1024-2ref --precision bf16 fp8 \
        --warmup 1 --repeats 2 --profile-steps 2 --out "$W/runs/profile-edit-1024-2ref" --no-progress 2>&1 | tail -25
      tar -C "$W/runs" -czf "$OUT/profile-edit-1024-2ref.tgz" profile-edit-1024-2ref ;;
  esac
done
ls -la "$OUT"
