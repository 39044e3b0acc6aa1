#!/usr/bin/env bash
# The quality recipes of docs/RESULTS.md, each in one call: per direction, one model per seed
# trained for a time budget (on a GPU all at once: one card holds them), each model's best
# kept checkpoints averaged, then the seeds' models ensembled; every system is scored on
# test2016 with beam 5. Settings are chosen on the validation set only (best.pt and the
# checkpoints averaged are those with the best validation BLEU).
#
#   bash benchmarks/quality.sh gpu OUT_DIR     # one GPU: de->en and en->de, seeds 1-3, 6 minutes
#                                              # of training each, all six at once (7.2 min in all on an H100)
#   bash benchmarks/quality.sh cpu OUT_DIR     # 2 CPU cores: configs/demo.yaml (de->en), one
#                                              # model, 60 minutes of training (61 min in all)
#   bash benchmarks/quality.sh check OUT_DIR   # the gpu recipe's every step with a tiny model on
#                                              # the CPU (checks the plumbing; numbers mean nothing)
#
# Environment: RUNS (where the run directories go; default OUT_DIR/runs), PYTHON (python3).
# OUT_DIR gets one JSON per evaluation (eval/), each run's training output (logs/), and
# summary.json / summary.md (benchmarks/quality_summary.py): a row per system with its steps,
# training time, validation BLEU and test BLEU/chrF/TER with sacreBLEU's signatures.
set -uo pipefail
SECONDS=0
recipe="${1:?usage: quality.sh gpu|cpu|check OUT_DIR}"
out="${2:?usage: quality.sh gpu|cpu|check OUT_DIR}"
mkdir -p "$out/eval" "$out/logs" && out="$(cd "$out" && pwd)" && rm -f "$out/FAILED"
runs="$(realpath -m "${RUNS:-$out/runs}")"  # a relative RUNS: from where the script was called
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"

case "$recipe" in
  gpu)   device=cuda directions="de_en en_de" seeds="1 2 3" best=5
         set=(train.max_minutes=6 train.max_steps=100000 train.valid_every=250 train.keep_checkpoints=10
              train.threads=2 train.device=cuda) ;;
  cpu)   device=cpu directions="demo" seeds="1" best=3
         set=(train.max_minutes=60 train.max_steps=100000 train.valid_every=500 train.keep_checkpoints=6) ;;
  check) device=cpu directions="de_en en_de" seeds="1 2" best=2
         for side in de en; do  # small sets: quick evaluations
           head -n 100 "data/multi30k/val.$side" > "$out/val100.$side"
           head -n 100 "data/multi30k/test2016.$side" > "$out/test100.$side"
         done
         set=(train.max_steps=12 train.valid_every=4 train.keep_checkpoints=3 train.threads=1
              train.device=cpu model.embedding_size=32 model.encoder_hidden_size=32
              model.decoder_hidden_size=32 data.vocab_size=1000 "data.valid=$out/val100"
              "data.test=$out/test100") ;;
  *) echo "quality.sh: unknown recipe '$recipe' (gpu, cpu or check)" >&2; exit 2 ;;
esac
config() { [[ $1 == demo ]] && echo configs/demo.yaml || echo "configs/multi30k_$1.yaml"; }
"$py" -c "import sys, torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.is_available(), '| python', sys.version.split()[0])"
[[ $device == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 1. Train every (direction, seed) at once; each writes logs/<dir>-s<seed>.log
pids=()
for dir in $directions; do
  for seed in $seeds; do
    name="$dir-s$seed"
    overrides=(); for kv in "${set[@]}" "train.seed=$seed"; do overrides+=(--set "$kv"); done
    "$py" scripts/train.py "$(config "$dir")" --run-dir "$runs/$name" --no-test "${overrides[@]}" \
      > "$out/logs/$name.log" 2>&1 &
    pids+=($!)
  done
done
failed=0  # the exit status: 1 if any training, averaging or evaluation failed
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
echo "training done at $SECONDS s$( (( failed )) && echo ': a training FAILED, see logs/')"
grep -h "^trained" "$out"/logs/*.log

# 2. Per run: average its best kept checkpoints; score best and averaged (all runs at once)
evaluate() {  # NAME RUN_DIR ARGS...: scripts/evaluate.py's JSON into eval/NAME.json
  local name=$1; shift
  "$py" scripts/evaluate.py "$@" --device "$device" --beam-size 5 --json > "$out/eval/$name.json" \
    2> "$out/logs/eval-$name.log" || { echo "evaluation $name FAILED:"; tail -n 3 "$out/logs/eval-$name.log"
                                       touch "$out/FAILED"; }
}
for dir in $directions; do
  for seed in $seeds; do
    name="$dir-s$seed"
    ( "$py" scripts/average.py "$runs/$name" --best "$best" >> "$out/logs/$name.log" 2>&1 || touch "$out/FAILED"
      evaluate "$name-averaged" "$runs/$name" --checkpoint averaged ) &
    evaluate "$name-best" "$runs/$name" &
  done
done
wait
echo "single and averaged models scored at $SECONDS s"

# 3. Per direction with several seeds: the ensemble of their best, and of their averaged, models
for dir in $directions; do
  set -- $seeds
  (( $# > 1 )) || continue
  first="$runs/$dir-s$1"; shift
  members=(); averaged=()
  for seed in "$@"; do members+=("$runs/$dir-s$seed"); averaged+=("$runs/$dir-s$seed:averaged"); done
  evaluate "$dir-ensemble-best" "$first" --ensemble "${members[@]}" &
  evaluate "$dir-ensemble-averaged" "$first" --checkpoint averaged --ensemble "${averaged[@]}" &
done
wait
echo "ensembles scored at $SECONDS s"
"$py" benchmarks/quality_summary.py "$out" "$runs" "$device" || failed=1
[[ -e "$out/FAILED" ]] && failed=1
echo "quality.sh $recipe: $SECONDS s$( (( failed )) && echo '; something FAILED (exit status 1)')"
exit "$failed"
