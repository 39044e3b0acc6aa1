"""The table of benchmarks/quality.sh: one row per system (a single model's best checkpoint, its
averaged checkpoint, an ensemble), with training steps and time, validation BLEU and test
BLEU / chrF / TER with sacreBLEU's signatures. Writes OUT_DIR/summary.json and summary.md.

    python benchmarks/quality_summary.py OUT_DIR RUNS_DIR DEVICE
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def run_facts(run: Path, log: Path) -> dict:
    """Steps, training seconds and validation BLEU of one run, from its files and its log."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    valid = [(m["step"], m["valid_bleu"]) for m in metrics if "valid_bleu" in m]
    text = log.read_text(errors="replace") if log.is_file() else ""
    trained = re.search(r"trained (\d+) steps in (\d+) s", text)
    averaged = re.search(r"averaged (\d+) checkpoints \(([^)]*)\)", text)
    best_step, best_bleu = max(valid, key=lambda sb: sb[1]) if valid else (None, None)
    return {"direction": f"{cfg['data']['src_lang']}-{cfg['data']['tgt_lang']}", "seed": cfg["train"]["seed"],
            "steps": int(trained[1]) if trained else max((m["step"] for m in metrics), default=0),
            "train_seconds": int(trained[2]) if trained else None,
            "best_valid_bleu": best_bleu, "best_step": best_step, "valid_bleu_by_step": valid,
            "averaged": averaged[2].split(", ") if averaged else None}


def main(out: Path, runs: Path, device: str) -> None:
    rows = []
    for path in sorted((out / "eval").glob("*.json")):
        name = path.stem
        try:
            system = json.loads(path.read_text())["systems"][0]
        except (ValueError, KeyError, IndexError):
            rows.append({"system": name, "error": f"no report in {path.name}"})
            continue
        base = re.sub(r"-(best|averaged)$", "", name)
        members = sorted(runs.glob(f"{base.split('-ensemble')[0]}-s*")) if "-ensemble" in base else [runs / base]
        facts = [run_facts(run, out / "logs" / f"{run.name}.log") for run in members]
        scores = system["scores"]
        rows.append({
            "system": name, "direction": facts[0]["direction"], "models": len(facts),
            "checkpoint": name.rsplit("-", 1)[1], "seeds": [f["seed"] for f in facts],
            "steps": [f["steps"] for f in facts], "train_seconds": [f["train_seconds"] for f in facts],
            "best_valid_bleu": [f["best_valid_bleu"] for f in facts],
            "averaged_checkpoints": [f["averaged"] for f in facts] if name.endswith("averaged") else None,
            "test_bleu": round(scores["bleu"], 2), "test_chrf": round(scores["chrf"], 2),
            "test_ter": round(scores["ter"], 2), "bleu_signature": scores["bleu_signature"],
            "chrf_signature": scores["chrf_signature"], "ter_signature": scores["ter_signature"],
            "decode_seconds": system.get("decode_seconds")})
    summary = {"machine": describe(device), "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| system | direction | steps | training s | best valid BLEU | test BLEU | chrF | TER |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['error']} | | | | | | |")
            continue
        join = lambda xs: " / ".join("?" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
                                     for x in xs)
        lines.append(f"| {r['system']} | {r['direction']} | {join(r['steps'])} | {join(r['train_seconds'])} | "
                     f"{join(r['best_valid_bleu'])} | {r['test_bleu']:.2f} | {r['test_chrf']:.2f} | "
                     f"{r['test_ter']:.2f} |")
    if rows and "error" not in rows[0]:
        lines += ["", f"BLEU `{rows[0]['bleu_signature']}`, chrF `{rows[0]['chrf_signature']}`, "
                      f"TER `{rows[0]['ter_signature']}`"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
