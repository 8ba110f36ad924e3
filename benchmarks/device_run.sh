#!/usr/bin/env bash
# The GPU benchmarks in one call on the device machine (H100/H200, no internet, no Ray installed there): the
# extraction job (first: the figure that matters most), then CosPlace training under Ray Train against a plain loop.
# Here, first: Ray's wheels into .whl/ (pip wheel of ray[data,train,tune] and its dependencies; kept out of git)
# There (the `run` tool, carry [".whl"], timeout_s about 560): bash benchmarks/device_run.sh [benchmark flags]
# Prints every phase as it ends and, last, the RESULT lines again; the whole log is left in $OUT/bench.log.
set -uo pipefail
out=${OUT:-/tmp}
log=$out/bench.log
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log"
# Graph breaks of the paper-size models under this machine's torch and transformers (tracing only: seconds).
timeout 90 python3 benchmarks/graph_breaks.py --models paper-random --device cuda --side 512 2>&1 \
  | grep -e RESULT -e break -e torch >> "$log"
# Defaults: the naive fp32 loop; the eager chain alone; the compiled Ray job twice (cold cache, then warm: what a
# second job on the machine, or a cluster with a shared --compile-cache, starts with), the warm one rerun on a
# quarter of the photos for the steady rate; then, time left, compiled with 2 batches per actor (+mt: one batch's
# host work overlaps the other's forward); last, eager, which runs only if compiling failed fast or time is left.
# Later flags override these.
python3 benchmarks/extract_throughput.py --device cuda --models paper-random --side 512 --strategy inpaint \
  --images 3072 --loop-images 48 --gpu-only eager --gpu-only-images 128 --min-job-s 60 \
  --variants fused+compile,fused+compile,fused+compile+mt,fused \
  --work-dir /tmp/bench --timeout-s "${BENCH_TIMEOUT_S:-380}" "$@" 2>&1 \
  | grep -v -e "constructor arguments" -e "logging_progress.py:1[89]" >> "$log"
# CosPlace ResNet-50 at 512x512, bf16: the Ray Train job (1 worker, 1 GPU) against a plain loop on the same maps,
# with the GPU's utilisation sampled every half second meanwhile (mean of the samples over 0%: while it works).
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$out/train-util.csv" &
sampler=$!
timeout "${TRAIN_TIMEOUT_S:-130}" python3 benchmarks/train_throughput.py --device cuda --backbone resnet50 --side 512 \
  --places 16 --dense-train 8 --batch-size 32 --epochs 3 --workers 1 --threads 8 --work-dir /tmp/train-bench 2>&1 \
  | grep -e RESULT -e Error >> "$log"
kill "$sampler" 2>/dev/null
awk '$1 > 0 {s += $1; n++} END {if (n) printf "RESULT GPU utilisation during the training benchmark: %.0f%% (%d busy samples)\n", s / n, n}' \
  "$out/train-util.csv" >> "$log"
echo "=== summary"
grep -e RESULT -e "break" -e "ready on" -e "TIMEOUT" -e "Error" -e "^torch" "$log" | cut -c1-400
