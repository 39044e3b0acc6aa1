#!/usr/bin/env bash
# Issue 28's measurements of two training workflows on configs/demo.yaml (1,000 steps a
# direction), each model scored on test2016 with beam 5 (docs/RESULTS.md):
#   sampling    subword regularization: data.subword_sampling 0.1 (BPE-dropout) against off, seeds
#               1 and 2 (seed 1 off is the demo: pass it as DEMO_RUN to reuse it);
#   directions  one de<->en model (data.directions [de-en, en-de], 2,000 steps) against the demo
#               (de->en) and the demo with the languages swapped (en->de), 1,000 steps each.
#
#   bash benchmarks/training_workflows.sh sampling|directions|all OUT_DIR [DEMO_RUN]
#
# SEEDS="1" (default "1 2") limits the sampling comparison to those seeds.
# OUT_DIR gets the run directories, logs/, eval/ and summary-<part>.json.
set -euo pipefail
part="${1:?usage: training_workflows.sh sampling|directions|all OUT_DIR [DEMO_RUN]}"
out="${2:?usage: training_workflows.sh sampling|directions|all OUT_DIR [DEMO_RUN]}"
mkdir -p "$out/logs" "$out/eval" && out="$(cd "$out" && pwd)"
demo="$(realpath -m "${3:-$out/off-s1}")"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
train() {  # train RUN_DIR [--set KEY=VALUE ...], unless trained
  local run=$1; shift
  [[ -f "$run/checkpoints/best.pt" ]] && return
  nmt-train configs/demo.yaml --run-dir "$run" --no-test "$@" > "$out/logs/$(basename "$run").log" 2>&1
}
evaluate() {  # evaluate NAME RUN_DIR [--target-lang L]
  local name=$1 run=$2; shift 2
  [[ -f "$out/eval/$name.json" ]] || nmt-evaluate "$run" --out "$out/eval/$name" --json "$@" > "$out/eval/$name.json"
}
summary() {  # summary PART NAME...: test scores and best validation BLEU of each
  "$py" - "$out" "$@" <<'PY'
import json, sys
from pathlib import Path
out, part, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = {}
for name in names:
    system = json.loads((out / "eval" / f"{name}.json").read_text())["systems"][0]
    rows[name] = {k: system["scores"][k] for k in ("bleu", "chrf", "ter", "bleu_signature")}
    rows[name]["checkpoint"] = system["checkpoint"]
(out / f"summary-{part}.json").write_text(json.dumps(rows, indent=1))
print(json.dumps(rows, indent=1))
PY
}
if [[ $part == sampling || $part == all ]]; then
  names=()
  for seed in ${SEEDS:-1 2}; do
    off="$out/off-s$seed"; [[ $seed == 1 ]] && off="$demo"
    train "$off" --set "train.seed=$seed"
    train "$out/sampling-s$seed" --set data.subword_sampling=0.1 --set "train.seed=$seed"
    evaluate "off-s$seed" "$off"
    evaluate "sampling-s$seed" "$out/sampling-s$seed"
    names+=("off-s$seed" "sampling-s$seed")
  done
  summary sampling "${names[@]}"
fi
if [[ $part == directions || $part == all ]]; then
  train "$demo"
  train "$out/en-de" --set data.src_lang=en --set data.tgt_lang=de
  train "$out/de-en-en-de" --set "data.directions=[de-en, en-de]" --set train.max_steps=2000
  evaluate de-en "$demo"
  evaluate en-de "$out/en-de"
  for lang in en de; do evaluate "both-to-$lang" "$out/de-en-en-de" --target-lang "$lang"; done
  summary directions de-en en-de both-to-en both-to-de
fi
