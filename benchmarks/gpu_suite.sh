#!/usr/bin/env bash
# Every GPU speed number of docs/BENCHMARKS.md in one call, each next to the eager-PyTorch
# ceiling measured in the same call (benchmarks/ceiling.py), then one table.
#
#   usage: bash benchmarks/gpu_suite.sh OUT_DIR          # one GPU, ~6-7 minutes on an H100
#          bash benchmarks/gpu_suite.sh OUT_DIR --cpu    # the same rows, tiny sizes, on the CPU
#                                                        # (checks the plumbing; the numbers mean nothing)
#
# Rows (reference setting of benchmarks/train_speed.py, fp32 with nmt's default TF32 unless named):
#   nmt training, 64 sentences per batch (train_b64) and ~16k-token batches (train_16k), the
#   latter also with the gnmt decoder (train_16k_gnmt: each decoder layer one cuDNN call);
#   a model for decoding: the reference setting, 4k-token batches, 90 s;
#   nmt greedy and beam-5 decoding of test2016 at batch 1,000, eager and under CUDA graphs
#   (decode.cuda_graphs; whether its output is the eager output) (decode_b1000);
#   the ceiling's training at 64 sentences and ~16k tokens and greedy decoding at batch
#   1,000 for 20 steps, each with TF32 off and on (ceiling_*.json, ceiling_*_tf32.json);
#   if the time so far allows: nmt with train.tf32=false and with bf16 autocast (optional rows).
# Each row writes OUT_DIR/NAME.json (its JSON), NAME.log (stderr) and prints its summary
# line; the table (python benchmarks/ceiling.py --summarize OUT_DIR) compares each nmt
# row with the ceiling run at nmt's TF32 setting, and goes to OUT_DIR/summary.md.
# A failed row is reported and the suite goes on; the exit status is 1 if any row failed.
# Time on one H100 (estimate from the earlier nmt rates: 0.06 s/step at 64 sentences,
# ~0.1-0.2 s/step at 16k tokens, ~10 s start-up per nmt process with its sentencepiece
# training): rows ~3.5 min, model ~2 min, decoding ~0.5 min, ceiling ~1 min.
set -uo pipefail
SECONDS=0
out="${1:?usage: gpu_suite.sh OUT_DIR [--cpu]}"
cpu=0
[[ "${2:-}" == "--cpu" || "${SUITE_CPU:-0}" == 1 ]] && cpu=1
mkdir -p "$out" && out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
work="$(mktemp -d)"  # the decoding model's run directory (checkpoints: ~400 MB), removed at the end
trap 'rm -rf "$work"' EXIT

if (( cpu )); then
  echo "CPU plumbing check: tiny step counts and batches; the numbers mean nothing."
  device=cpu threads="${SUITE_THREADS:-1}" tokens="${SUITE_TOKENS:-1024}"
  b64_steps=2 k16_steps=1 limit=1800 deadline=1000000
  model=(--steps 5)
  head -n 20 data/multi30k/test2016.en > "$out/test20.en"
  head -n 20 data/multi30k/test2016.de > "$out/test20.de"
  decode=(--repeats 1 --test "$out/test20")
  ceil_train=(--steps 2 --repeats 2) ceil_greedy=(--steps 3 --repeats 2)
else
  device=cuda threads=2 tokens=16384
  # limit: any one row's time (a hang guard); deadline: the optional rows end by then (7.5 min)
  b64_steps=300 k16_steps=120 limit=240 deadline=450
  model=(--steps 100000 --validate --set train.batch_size=4096 --set train.batch_unit=tokens
         --set train.max_minutes=1.5 --set train.valid_every=500 --set data.test=data/multi30k/test2016)
  decode=(--repeats 3)
  ceil_train=(--steps 20 --repeats 5) ceil_greedy=(--steps 20 --repeats 20)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
fi
"$py" -c "import sys, torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available(), '| python', sys.version.split()[0])"

failed=()
row() {  # NAME COMMAND...: run one row; NAME.json gets the JSON, NAME.log stderr
  local name=$1 t0=$SECONDS; shift
  if timeout "$limit" "$@" > "$out/$name.stdout" 2> "$out/$name.log"; then
    grep -v '^[A-Za-z]' "$out/$name.stdout" > "$out/$name.json"  # the JSON object (indented)
    grep '^[A-Za-z]' "$out/$name.stdout"                         # its summary line(s)
    rm -f "$out/$name.stdout"
    echo "  [$name: $((SECONDS - t0)) s; suite at $SECONDS s]"
  else
    local rc=$?
    failed+=("$name (exit $rc, see $out/$name.log)")
    echo "  [$name FAILED, exit $rc, after $((SECONDS - t0)) s]"; tail -n 3 "$out/$name.log" | sed 's/^/    /'
  fi
}
nmt_train() { local name=$1; shift; row "$name" "$py" benchmarks/train_speed.py --device "$device" \
  --set "train.threads=$threads" "$@"; }
ceiling() { local name=$1; shift; row "$name" "$py" benchmarks/ceiling.py --device "$device" \
  --threads "$threads" "${spm[@]}" "$@"; }
ceiling_pair() {  # TF32 off and on (on a CPU only off: TF32 is a GPU matter)
  local name=$1; shift; ceiling "$name" "$@"; (( cpu )) || ceiling "${name}_tf32" --tf32 "$@"; }

# 1. the decoding model, then nmt's decoding; its sentencepiece model gives the ceiling real lengths
nmt_train train_model --run-dir "$work/model" "${model[@]}"
spm=()
[[ -f "$work/model/spm.model" ]] && spm=(--spm "$work/model/spm.model")
row decode_b1000 "$py" benchmarks/decode_speed.py "$work/model" --device "$device" --threads "$threads" \
  --modes fp32,graphs --beams 1,5 --batch-size 1000 "${decode[@]}"
ceiling_pair ceiling_greedy_b1000 --mode greedy --batch-sentences 1000 "${ceil_greedy[@]}"

# 2. training: nmt, then the ceiling with TF32 off and on
nmt_train train_b64 --steps "$b64_steps"
ceiling_pair ceiling_train_b64 --mode train --batch-sentences 64 "${ceil_train[@]}"
nmt_train train_16k --steps "$k16_steps" --set "train.batch_size=$tokens" --set train.batch_unit=tokens
ceiling_pair ceiling_train_16k --mode train --batch-tokens "$tokens" "${ceil_train[@]}"
nmt_train train_16k_gnmt --steps "$k16_steps" --set "train.batch_size=$tokens" --set train.batch_unit=tokens \
  --set model.input_feeding=false --set model.decoder=gnmt

# 3. optional rows, while the time allows (each must end by the deadline, or it is cut and
#    reported as failed): full fp32 (train.tf32=false) and bf16 autocast
bf16=1
if (( cpu )) && ! "$py" -c "import sys, torch; sys.path.insert(0, '.'); from nmt.device import native_bf16
sys.exit(not native_bf16(torch.device('cpu')))" 2>/dev/null; then
  bf16=0; echo "  [bf16 rows skipped: no native bf16 on this CPU (nmt.device.native_bf16)]"
fi
for spec in "train_b64_notf32 b64 train.tf32=false" "train_16k_notf32 16k train.tf32=false" \
            "train_b64_bf16 b64 train.precision=bf16" "train_16k_bf16 16k train.precision=bf16"; do
  read -r name size setting <<< "$spec"
  [[ $name == *bf16 ]] && (( ! bf16 )) && continue
  left=$(( deadline - SECONDS ))
  if (( left < 45 )); then echo "  [$name skipped: the suite is at $SECONDS s]"; continue; fi
  (( left < limit )) && limit=$left  # an optional row never takes the suite past the deadline
  if [[ $size == b64 ]]; then nmt_train "$name" --steps "$b64_steps" --set "$setting"
  else nmt_train "$name" --steps "$k16_steps" --set "train.batch_size=$tokens" --set train.batch_unit=tokens \
         --set "$setting"; fi
done

echo
"$py" benchmarks/ceiling.py --summarize "$out" | tee "$out/summary.md"
echo
echo "suite: $SECONDS s in all$( (( cpu )) && echo ' (CPU plumbing check)')"
if (( ${#failed[@]} )); then printf 'failed: %s\n' "${failed[@]}"; exit 1; fi
