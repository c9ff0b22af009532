#!/usr/bin/env bash
# The GPU check (make gpu-check): the embedded COCO job, `keras-mnv2 train coco`, trained four
# ways, with and without --mixed-precision and with and without XLA (--jit-compile), then a table
# of each run's training images/s (metrics.json train_images_per_second: each epoch's first
# step, which compiles, left out) and AP50.
#
# On a GPU: the embedded recipe as it is, on the embedded data. Without one it says so and runs a
# short CPU version instead (a small set from the same generator, 1 epoch at 96 px), so that the
# script itself is checked anywhere: its figures say nothing about a GPU.
#
# Environment: PY (the Python with keras_mnv2, default .venv/bin/python), GPU_CHECK_DIR (the run
# folders and the table, default runs/gpu_check), GPU_CHECK_BACKEND (the Keras backend, default
# tensorflow), GPU_CHECK_TINY=1 (the CPU version at its smallest, without the XLA runs: its test;
# CUDA_VISIBLE_DEVICES="" hides a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${GPU_CHECK_DIR:-runs/gpu_check}
BACKEND=${GPU_CHECK_BACKEND:-tensorflow}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
xlas=(no-xla xla)

has_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 &&
    "$PY" -c "import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)" \
      2>/dev/null
}

if has_gpu; then
  device="GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  data=()  # the embedded data and recipe
  recipe=()
else
  echo "gpu-check: no GPU found (nvidia-smi, TensorFlow): a short CPU version instead"
  if [ "${GPU_CHECK_TINY:-0}" = "1" ]; then
    echo "gpu-check: GPU_CHECK_TINY=1: at its smallest, without the XLA runs (XLA compiles" \
      "the training step for minutes on a CPU)"
    xlas=(no-xla)
    sizes=(--num-train 32 --num-val 8 --image-size 96)
    recipe=(--input-size 64 --batch-size 8 --epochs 1)
  else
    sizes=(--num-train 256 --num-val 32 --image-size 128)
    recipe=(--input-size 96 --batch-size 16 --epochs 1)
  fi
  device="CPU ($(nproc) cores), no GPU"
  "$PY" -m pipelines.synthetic.coco "$OUT/data" "${sizes[@]}" --num-classes 2 --min-scale 0.3 \
    --max-objects 3 --crowd-fraction 0
  data=(--coco-dir "$OUT/data" --recipe embedded)
fi

runs=()
for precision in float32 mixed; do
  for xla in "${xlas[@]}"; do
    name="${precision}_${xla}"
    flags=()
    [ "$precision" = mixed ] && flags+=(--mixed-precision)
    if [ "$xla" = xla ]; then flags+=(--jit-compile); else flags+=(--no-jit-compile); fi
    rm -rf "${OUT:?}/$name"  # a finished run would not train again
    echo "gpu-check: keras-mnv2 train coco --backend $BACKEND ${flags[*]} ${data[*]} ${recipe[*]}"
    "$PY" -m pipelines.cli train coco --backend "$BACKEND" "${flags[@]}" "${data[@]}" \
      "${recipe[@]}" --run-dir "$OUT/$name" >"$OUT/$name.log" 2>&1 ||
      { echo "gpu-check: $name failed, see $OUT/$name.log" >&2; tail -20 "$OUT/$name.log" >&2;
        exit 1; }
    runs+=("$OUT/$name")
  done
done

"$PY" - "$device" "$BACKEND" "${runs[@]}" <<'EOF' | tee "$OUT/table.md"
import json
import os
import sys

device, backend, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
first = json.load(open(os.path.join(runs[0], "metrics.json")))
recipe = first["recipe"]
print(f"\nembedded COCO job on {device}, backend {backend}: {recipe['epochs']} epoch(s) of "
      f"batch {recipe['batch_size']} at {recipe['input_size']} px, "
      f"{first['train_images_listed']} training images\n")
print("| mixed precision | XLA | images/s | AP50 | train s |")
print("|---|---|---|---|---|")
for run in runs:
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    precision, xla = os.path.basename(run).split("_")
    speed = metrics["train_images_per_second"]
    print(f"| {'yes (' + metrics['precision'] + ')' if precision == 'mixed' else 'no'} "
          f"| {'yes' if xla == 'xla' else 'no'} | {speed if speed is not None else 'n/a'} "
          f"| {metrics['AP50']:.4f} | {metrics['train_seconds']} |")
EOF
