#!/usr/bin/env bash
# Issue 28's fine-tuning measurement (docs/RESULTS.md "Fine-tuning"): configs/demo.yaml trained on
# the first 10,000 Multi30k pairs for 500 steps, then fine-tuned (nmt-train --init-from) on the
# other 19,000 for 1,000 steps with a validation every 100 steps, against the demo trained from
# scratch on all 29,000 for 1,000 steps. Every model is scored on test2016 with beam 5.
#
#   bash benchmarks/finetune.sh OUT_DIR [SCRATCH_RUN]   # SCRATCH_RUN: an existing demo run to reuse
#
# OUT_DIR gets the run directories, logs/ and summary.json (each run's validation curve and test
# scores; the fine-tuned run's test score at step 500, the same total steps as the demo's 1,000).
set -euo pipefail
out="${1:?usage: finetune.sh OUT_DIR [SCRATCH_RUN]}"
mkdir -p "$out/logs" "$out/data" && out="$(cd "$out" && pwd)"
scratch="${2:-$out/scratch}"
scratch="$(realpath -m "$scratch")"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
for side in de en; do
  head -n 10000 "data/multi30k/train.$side" > "$out/data/first10k.$side"
  tail -n +10001 "data/multi30k/train.$side" > "$out/data/other19k.$side"
done
if [[ ! -f "$scratch/checkpoints/best.pt" ]]; then
  nmt-train configs/demo.yaml --run-dir "$scratch" > "$out/logs/scratch.log" 2>&1
fi
nmt-train configs/demo.yaml --run-dir "$out/base10k" --set "data.train=$out/data/first10k" \
  --set train.max_steps=500 --no-test > "$out/logs/base10k.log" 2>&1
nmt-train configs/demo.yaml --run-dir "$out/finetuned" --init-from "$out/base10k" \
  --set "data.train=$out/data/other19k" --set train.valid_every=100 --set train.keep_checkpoints=10 \
  --set train.patience=0 > "$out/logs/finetuned.log" 2>&1
mkdir -p "$out/eval"
evaluate() { nmt-evaluate "$1" --checkpoint "$2" --out "$out/eval/$3" --json > "$out/eval/$3.json"; }
evaluate "$scratch" best scratch
evaluate "$out/base10k" best base10k
evaluate "$out/finetuned" step-500 finetuned-step500
evaluate "$out/finetuned" best finetuned-best
"$py" - "$out" "$scratch" <<'PY'
import json, sys
from pathlib import Path
out, scratch = Path(sys.argv[1]), Path(sys.argv[2])
def curve(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: round(r["valid_bleu"], 2) for r in rows if "valid_bleu" in r}
target = max(curve(scratch).values())
tuned = curve(out / "finetuned")
summary = {"valid_bleu": {"scratch": curve(scratch), "base10k": curve(out / "base10k"), "finetuned": tuned},
           "scratch_best_valid_bleu": target,
           "finetune_steps_to_reach_it": min((s for s, b in tuned.items() if b >= target), default=None),
           "test": {name: json.loads((out / "eval" / f"{name}.json").read_text())
                    for name in ("scratch", "base10k", "finetuned-step500", "finetuned-best")}}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k != "test"}, indent=1))
PY
