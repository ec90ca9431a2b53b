#!/usr/bin/env bash
# The H100 profile runs behind results/profile/h100-* and results/example-h100-synthetic (random full-size weights).
# Usage: OUT=/some/dir bash benchmarks/device_final_runs.sh ; each run folder comes back as a tarball in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
W=${WORK:-/tmp/final-runs}
mkdir -p "$W" "$OUT"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_pipeline_gpu.py 2>&1 | tail -4
run() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 -m harness.profile --synthetic full --precision bf16 fp8 --no-progress \
    --out "$W/$name" "$@" 2>&1 | grep -v -i "warning" | tail -6
  tar -C "$W" -czf "$OUT/$name.tgz" "$name"
}
run h100-gedit-512-cudagraphs 150 --scenario gedit-512 --cuda-graphs --warmup 1 --repeats 3
run h100-gedit-512 150 --scenario gedit-512 --warmup 1 --repeats 3
run h100-edit-1024-1ref 200 --scenario edit-1024-1ref --warmup 1 --repeats 2
ls -la "$OUT"
