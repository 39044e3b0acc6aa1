#!/usr/bin/env bash
# The GPU checks of the speed issue, as one script: training throughput in the
# reference setting at 64 sentences and at ~16k tokens per batch (fp32, bf16),
# then greedy and beam-5 decoding of test2016 with a model trained here.
#   usage: bash benchmarks/gpu_suite.sh OUT_DIR
set -euo pipefail
out="${1:?usage: gpu_suite.sh OUT_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
bench() { name=$1; shift; python3 benchmarks/train_speed.py --device cuda "$@" > "$out/$name.json" 2> "$out/$name.log"; tail -1 "$out/$name.json"; }
bench train_b64_fp32 --steps 200
bench train_b64_bf16 --steps 200 --set train.precision=bf16
bench train_16k_fp32 --steps 100 --set train.batch_size=16384 --set train.batch_unit=tokens
bench train_16k_bf16 --steps 100 --set train.batch_size=16384 --set train.batch_unit=tokens --set train.precision=bf16
# a model for decoding: the reference setting, 4k-token batches, 90 seconds
bench train_model --steps 100000 --run-dir /tmp/gpu-ref --validate \
  --set train.batch_size=4096 --set train.batch_unit=tokens --set train.max_minutes=1.5 \
  --set train.valid_every=500 --set data.test=data/multi30k/test2016
python3 benchmarks/decode_speed.py /tmp/gpu-ref --device cuda --modes fp32 --batch-size 64 > "$out/decode_b64.json"
tail -2 "$out/decode_b64.json"
python3 benchmarks/decode_speed.py /tmp/gpu-ref --device cuda --modes fp32 --batch-size 1000 > "$out/decode_b1000.json"
tail -2 "$out/decode_b1000.json"
