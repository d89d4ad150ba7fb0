#!/usr/bin/env bash
# Training speed and memory: 100 steps of b5_cityscapes at 1024x2048, one image
# per GPU, in fp32 and with bf16 autocast. Writes OUT/train_bench.json (GPU,
# torch, date, and per precision: steps/s, data-loading share, peak memory) and
# each run's own directory (summary.json, metrics.csv, curves.png).
#
#   scripts/gpu_train_bench.sh [OUT]                      # defaults: outputs/gpu_train_bench
#   NPROC=8 scripts/gpu_train_bench.sh                    # DDP over 8 GPUs (torchrun)
#   PRESET=small SIZE=64x128 STEPS=5 DEVICE=cpu AMPS=off WORKERS=1 scripts/gpu_train_bench.sh /tmp/b
#
# Synthetic scenes stand in for Cityscapes (no dataset needed); the lr is
# lowered from the recipe's so that a network trained from scratch stays finite
# for the whole run: speed does not depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-outputs/gpu_train_bench}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PRESET=${PRESET:-b5_cityscapes}
SIZE=${SIZE:-1024x2048}
STEPS=${STEPS:-100}
NPROC=${NPROC:-1}
AMPS=${AMPS:-off bf16}
WORKERS=${WORKERS:-4}
DEVICE=${DEVICE:-cuda}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"

for amp in $AMPS; do
    args=(-m efficientps_ros.train --recipe config/train_b5_cityscapes.yaml --preset "$PRESET"
          --steps "$STEPS" --batch-size 1 --image-size "$SIZE" --scales 1.0 --lr 0.01 --amp "$amp"
          --workers "$WORKERS" --val-count 1 --checkpoint-every 1000000 --log-every 10 --no-progress
          --device "$DEVICE" --out "$OUT/$amp/model.safetensors" --work-dir "$OUT/$amp")
    if [ "$NPROC" -gt 1 ]; then
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "${args[@]}"
    else
        "$PYTHON" "${args[@]}"
    fi
    rm -f "$OUT/$amp"/*.safetensors "$OUT/$amp"/checkpoints/*.safetensors  # figures only
done

"$PYTHON" - "$OUT" "$PRESET" "$SIZE" "$AMPS" <<'PY'
import datetime, json, sys
from pathlib import Path
import torch

out, preset, size, amps = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split()
runs = {amp: json.loads((out / amp / "summary.json").read_text()) for amp in amps}
report = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "preset": preset, "image_size": size, "torch": torch.__version__,
    "cuda": torch.version.cuda, "device": next(iter(runs.values()))["device"],
    "runs": {amp: {k: r[k] for k in ("steps", "timed_steps", "iterations_per_second", "data_share",
                                      "peak_memory_bytes", "world_size", "images_per_step")}
             for amp, r in runs.items()},
}
(out / "train_bench.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
PY
