#!/usr/bin/env bash
# One GPU check of the engine (H100/H200), from the repository root; about 10 minutes:
#
#   bash benchmarks/gpu_check.sh                 # results in $OUT if set, else ./bench-gpu
#
# 1. benchmarks.run --suite gpu (benchmarks/workloads.py SUITES["gpu"]; one process, same input and card):
#    512x4 (512² → 2048²) in fp16 at defaults (a) with a host-sync audit (the device path must show no
#    synchronisation per tile; its stages' tile batches are auto, sized from free memory), the fixed tile
#    batches from before auto (a-b4), the same with the canvases on the host (a-host), stage 1 alone (d), the FLOP
#    candidates (a-cached, a-cached-shift with its sync audit, a-refresh5-shift, a-shift, a-refresh2),
#    diffusers' x4 upscaler at the same steps (c), fp32 with TF32 (b), 1024x4 (a, d), bf16, then
#    --compile (a-compile, a-cached-compile: the warm-up runs compile), the x4 upscaler at its default steps
#    and 1024x4 cached. New cases stop starting after TIME_BUDGET (360 s); the run is killed at SUITE_TIMEOUT
#    (480 s); results.json/results.md are rewritten after every case, so a cut-short run keeps what it did.
# 2. compiled = eager on CUDA (tests/engine/test_compile.py, the cuda cases).
# 3. --steps 0 throughput against the number of writer threads with the real stage 1 on the GPU
#    (benchmarks.writers, writers.json), and the writers' ceiling with an instant model on this host's CPUs.
# 4. The dry run of 512x4 on this host's (idle) CPU: host work outside model calls, cassr's device path
#    against diffusers' pipeline (dry/results.md).
#
# A GPU machine without PyPI access but with torch/transformers can get diffusers and spandrel as wheels:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 spandrel==0.4.2
# copy the .whl folder next to this checkout there; this script installs .whl/*.whl into a temporary
# site folder when it is present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench-gpu}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-python3}"

SITE="${TMPDIR:-/tmp}/cassr-site"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv || true
  "$PY" - <<'PYEOF'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for p in ("diffusers", "transformers", "spandrel", "safetensors", "numpy", "pillow"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "MISSING")
PYEOF
} 2>&1 | tee "$OUT_DIR/env.txt"

timeout -k 10 "${SUITE_TIMEOUT:-480}" "$PY" -m benchmarks.run --suite gpu --device cuda \
  --time-budget "${TIME_BUDGET:-360}" --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/log.txt"
status=${PIPESTATUS[0]}
echo "benchmarks.run exited with $status" | tee -a "$OUT_DIR/log.txt"

CASSR_RUN_SLOW=1 timeout -k 5 150 "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_compile.py -k cuda 2>&1 \
  | tail -15 | tee "$OUT_DIR/compile_test.txt"

{
  timeout -k 5 90 "$PY" -m benchmarks.writers --pipeline realesrgan --device cuda --images 16 --writers 1,2,4,8
  timeout -k 5 60 "$PY" -m benchmarks.writers --pipeline instant --images 16 --writers 1,2,4,8
} 2>&1 | tee "$OUT_DIR/writers.json"

mkdir -p "$OUT_DIR/dry"
timeout -k 5 120 "$PY" -m benchmarks.run --workload 512x4 --compare a,a-b4,c,a,c --dry-run --threads 1 \
  --out "$OUT_DIR/dry" > "$OUT_DIR/dry/log.txt" 2>&1 || true

[ -f "$OUT_DIR/results.md" ] && cat "$OUT_DIR/results.md"
exit "$status"
