#!/usr/bin/env bash
# The model benchmark on one GPU, in one go: b5_cityscapes at 1024x2048,
# batch 1 and 2, the plain eager fp32 network against fp16 and bf16
# (weights cast, channels-last), eager and then compiled.
#
#   OUT=/some/folder scripts/gpu_bench.sh
#
# Needs only what the package imports (torch, torchvision, timm, safetensors,
# numpy, pyyaml, pillow), run from the repository root; no ROS, so its stages
# are reported absent. Every variant appends one JSON line to
# $OUT/bench.jsonl as soon as it is done and prints its table to
# $OUT/bench.log, so a run cut short keeps what it finished. Each part has
# its own time limit, and the whole script ends within BUDGET seconds.
#
# On the CPU, to try it: DEVICE=cpu CONFIG=small HEIGHT=64 WIDTH=128 FRAMES=2 scripts/gpu_bench.sh
# PARTS lists the parts as BATCH:COMPILE:SECONDS; ROS=off leaves the ROS
# stages out where rclpy is installed. The exit status is 1 when a part
# failed or ran out of time, 0 otherwise.
set -uo pipefail

OUT=${OUT:-outputs/gpu_bench}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-b5_cityscapes}
HEIGHT=${HEIGHT:-1024}
WIDTH=${WIDTH:-2048}
FRAMES=${FRAMES:-20}
BUDGET=${BUDGET:-360}
# Untrained weights score every box near 1/9: at 0.05 the box head keeps its
# cap of 100 detections per image, the heaviest load the RoI heads and the
# fusion can get.
SCORE=${SCORE:-0.05}
PYTHON=${PYTHON:-python3}
ROS=${ROS:-auto}
# The eager parts first: they are quick and they are what a node gets by default.
PARTS=${PARTS:-1:0:90 2:0:90 1:1:150 2:1:120}
if [ "$DEVICE" = cpu ]; then PRECISIONS=${PRECISIONS:-bf16}; else PRECISIONS=${PRECISIONS:-fp16 bf16}; fi

mkdir -p "$OUT"
LOG="$OUT/bench.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Compiled graphs are cached here, so a second run on the same machine skips compilation.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/efficientps_inductor}
START=$SECONDS
FAILED=0

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c 'import sys, torch, torchvision, timm; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__, "timm", timm.__version__)'
} 2>&1 | tee "$LOG"

# bench BATCH COMPILE LIMIT: one process, the baseline once, then every precision.
bench() {
    local batch=$1 compile=$2 limit=$3 left=$((BUDGET - (SECONDS - START)))
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    if [ "$limit" -lt 20 ]; then
        echo "skipped: batch $batch, compile $compile (no time left)" | tee -a "$LOG"
        FAILED=1
        return
    fi
    echo "== batch $batch, compile $compile, at most $limit s" | tee -a "$LOG"
    timeout --signal=INT --kill-after=10 "$limit" "$PYTHON" - "$batch" "$compile" <<PY 2>&1 | tee -a "$LOG"
import argparse, json, sys
from efficientps_ros.bench import run_variants

batch, compile = int(sys.argv[1]), sys.argv[2] == "1"
args = argparse.Namespace(config="$CONFIG", checkpoint=None, device="$DEVICE", precision="fp32", height=$HEIGHT,
                          width=$WIDTH, batch=batch, frames=$FRAMES, warmup=3, compile=compile,
                          agreement_scenes=4, score_threshold=$SCORE, ros="$ROS", json=None)

def save(report):
    with open("$OUT/bench.jsonl", "a") as out:
        out.write(json.dumps(report) + "\n")

run_variants(args, [(precision, compile) for precision in "$PRECISIONS".split()], save)
PY
    local status=${PIPESTATUS[0]}
    echo "== exit status $status after $((SECONDS - START)) s" | tee -a "$LOG"
    if [ "$status" -ne 0 ]; then FAILED=1; fi
}

for part in $PARTS; do
    IFS=: read -r batch compile limit <<<"$part"
    bench "$batch" "$compile" "$limit"
done
echo "done in $((SECONDS - START)) s; results in $OUT/bench.jsonl" | tee -a "$LOG"
exit $FAILED
