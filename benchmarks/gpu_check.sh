#!/usr/bin/env bash
# One GPU benchmark run that fits a 10-minute device command (H100/H200), from the repository root:
#
#   bash benchmarks/gpu_check.sh                 # results in $OUT if set, else ./bench-gpu
#
# What it runs (benchmarks/workloads.py SUITES["gpu"], one process, same input and card, in this order):
#   512x4 (512² → 2048²) at defaults in fp16: (a) with a warm-up and a host-sync audit, (d) stage 1 alone,
#   (a') cached guidance, (c) diffusers' StableDiffusionUpscalePipeline at the same steps as (a), at 20 steps
#   and at its default 75, (b) optimisations off (fp32, tile batch 1, per-step); 1024x4 (a), (d) and (a');
#   then GPU experiments on 512x4: tile batch 8, channels-last UNet/VAE, bf16.
# New cases stop starting after --time-budget (default 380 s) and the whole Python run is killed at 500 s;
# results.json/results.md are rewritten after every case, so a cut-short run keeps what it measured.
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
  "$PY" - <<'EOF'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for p in ("diffusers", "transformers", "spandrel", "safetensors", "numpy", "pillow"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "MISSING")
EOF
} 2>&1 | tee "$OUT_DIR/env.txt"

timeout -k 10 "${SUITE_TIMEOUT:-500}" "$PY" -m benchmarks.run --suite gpu --device cuda \
  --time-budget "${TIME_BUDGET:-380}" --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/log.txt"
status=${PIPESTATUS[0]}
echo "benchmarks.run exited with $status" | tee -a "$OUT_DIR/log.txt"

# The colour-fix before/after on this host's CPU (the image canvases live on the host).
timeout 40 "$PY" -m benchmarks.micro --size 2048 2>&1 | tee "$OUT_DIR/micro.json"
[ -f "$OUT_DIR/results.md" ] && cat "$OUT_DIR/results.md"
exit "$status"
