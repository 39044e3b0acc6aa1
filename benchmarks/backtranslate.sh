#!/usr/bin/env bash
# Back-translation (Sennrich et al. 2016) with tagged synthetic sources (Caswell et al. 2019), on
# the bundled Multi30k, as issue 28 measures it (docs/RESULTS.md "Back-translation"):
#   1. split the 29,000 training pairs into halves A (first 14,500) and B (the rest);
#   2. train en->de on A (configs/demo.yaml with the languages swapped, 1,000 steps);
#   3. translate B's English side into German with it, by beam search (beam 5) and by sampling
#      (one sample per sentence, seed 1): the synthetic sources;
#   4. train de->en, every system with configs/demo.yaml's 1,000 steps:
#        real-half   A alone
#        bt-beam     A + (beam-searched German, B's real English), the synthetic sources tagged <BT>
#        bt-sample   A + (sampled German, B's real English), tagged <BT>
#        all-real    A + B (the demo; pass an existing demo run as ALL_REAL_RUN to reuse it)
#   5. score each on test2016 with beam 5; OUT_DIR/summary.json holds the table.
#
#   bash benchmarks/backtranslate.sh OUT_DIR [ALL_REAL_RUN]
#
# BT_MODES="beam" (default "beam sample") makes only those synthetic sets and systems.
# On 2 CPU cores (bf16) each training takes about 9 minutes and each back-translation 2-5.
set -euo pipefail
out="${1:?usage: backtranslate.sh OUT_DIR [ALL_REAL_RUN]}"
mkdir -p "$out/data" "$out/logs" "$out/eval" && out="$(cd "$out" && pwd)"
all_real="$(realpath -m "${2:-$out/all-real}")"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
d="$out/data"
for side in de en; do
  head -n 14500 "data/multi30k/train.$side" > "$d/A.$side"
  tail -n +14501 "data/multi30k/train.$side" > "$d/B.$side"
done
train() {  # train NAME [--set KEY=VALUE ...]: configs/demo.yaml in OUT_DIR/NAME, unless trained
  local name=$1; shift
  [[ -f "$out/$name/checkpoints/best.pt" ]] && return
  nmt-train configs/demo.yaml --run-dir "$out/$name" --no-test "$@" > "$out/logs/$name.log" 2>&1
}
train en-de-A --set data.src_lang=en --set data.tgt_lang=de --set "data.train=$d/A"
modes=(${BT_MODES:-beam sample})
for how in "${modes[@]}"; do
  [[ -f "$d/bt-$how.de" ]] && continue
  [[ $how == beam ]] && flags=(--beam-size 5) || flags=(--samples 1 --seed 1)
  SECONDS=0
  nmt-translate "$out/en-de-A" -i "$d/B.en" -o "$d/bt-$how.de" "${flags[@]}"
  echo "{\"back-translation\": \"$how\", \"sentences\": 14500, \"seconds\": $SECONDS}" > "$out/logs/bt-$how.json"
  cp "$d/B.en" "$d/bt-$how.en"
done
train real-half --set "data.train=$d/A"
for how in "${modes[@]}"; do
  train "bt-$how" --set "data.directions=[{src: de, tgt: en, train: $d/A}, {src: de, tgt: en, train: $d/bt-$how, tag: <BT>}]"
done
[[ -f "$all_real/checkpoints/best.pt" ]] || nmt-train configs/demo.yaml --run-dir "$all_real" --no-test \
  > "$out/logs/all-real.log" 2>&1
systems=(real-half "${modes[@]/#/bt-}" all-real)
for name in "${systems[@]}"; do
  run="$out/$name"; [[ $name == all-real ]] && run="$all_real"
  nmt-evaluate "$run" --out "$out/eval/$name" --json > "$out/eval/$name.json"
done
"$py" - "$out" "${systems[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for name in sys.argv[2:]:
    system = json.loads((out / "eval" / f"{name}.json").read_text())["systems"][0]
    rows[name] = {k: system["scores"][k] for k in ("bleu", "chrf", "ter", "bleu_signature")}
bt = {name[3:]: json.loads((out / "logs" / f"{name}.json").read_text()) for name in sys.argv[2:]
      if name.startswith("bt-")}
(out / "summary.json").write_text(json.dumps({"test2016": rows, "back_translation": bt}, indent=1))
print(json.dumps({"test2016": rows, "back_translation": bt}, indent=1))
PY
