"""How time and memory grow: double the corpus, the batch, the sentence length and the beam.

Each measurement runs in a fresh process (so its peak RSS is its own) with the
reference model of ``train_speed.py`` on Multi30k en->de, 2 threads:

- corpus 1x/2x/4x (the training side repeated): sentencepiece + encoding +
  batching time, batches per epoch, and the epoch time they imply at the
  measured step time;
- batch 32/64/128/256 sentences: median training step time over 8 steps;
- length 1x/2x/4x (each example made of 1, 2 or 4 consecutive pairs joined): step time at 64 sentences;
- beam 1/2/4/8/16: decoding 300 test sentences with a trained run (``--run-dir``).

    python benchmarks/cost_growth.py --run-dir runs/bench-ref > benchmarks/results/cost_growth.json
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def reference_config():
    from nmt.config import load_config
    from train_speed import REFERENCE
    return load_config(ROOT / "configs" / "multi30k_en_de.yaml", REFERENCE)


def worker(kind: str, factor: int, run_dir: str) -> dict:
    import numpy as np
    import torch

    from nmt.data import batch_of, epoch_batches, load_split
    from nmt.model import Seq2Seq
    from nmt.train import loss_sum
    from nmt.vocab import train_vocab

    torch.set_num_threads(2)
    torch.manual_seed(1)
    cfg = reference_config()
    src, tgt = load_split(cfg.data, str(ROOT / "data" / "multi30k" / "train"))
    result = {"kind": kind, "factor": factor}
    if kind == "beam":
        from nmt.translate import Translator
        translator = Translator.load(run_dir)
        test_src, _ = load_split(cfg.data, str(ROOT / "data" / "multi30k" / "test2016"))
        test_src = test_src[:300]
        translator.translate(test_src[:64], beam_size=factor)
        start = time.perf_counter()
        translator.translate(test_src, beam_size=factor)
        result["seconds"] = round(time.perf_counter() - start, 2)
    else:
        if kind == "corpus":
            src, tgt = src * factor, tgt * factor
        start = time.perf_counter()
        vocab = train_vocab(src + tgt, Path("/tmp") / f"cost_growth_{kind}{factor}.model", 8000)
        src_ids, tgt_ids = vocab.encode(src), vocab.encode(tgt)
        if kind == "length":  # join `factor` consecutive pairs into one example
            src_ids = [sum(src_ids[i:i + factor], []) for i in range(0, len(src_ids) - factor + 1, factor)]
            tgt_ids = [sum(tgt_ids[i:i + factor], []) for i in range(0, len(tgt_ids) - factor + 1, factor)]
        sentences = 32 * factor if kind == "batch" else 64
        batches = epoch_batches(np.array([len(s) for s in src_ids]), np.array([len(t) for t in tgt_ids]),
                                sentences, "sentences", 1, 0)
        result["data_seconds"] = round(time.perf_counter() - start, 2)
        result["batches_per_epoch"] = len(batches)
        model = Seq2Seq(cfg.model, len(vocab), len(vocab))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        times = []
        for idx in batches[:10]:
            batch = batch_of([src_ids[i] for i in idx], [tgt_ids[i] for i in idx])
            start = time.perf_counter()
            loss = loss_sum(model, batch, 0.0) / batch.n_tokens
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        result["step_seconds"] = round(statistics.median(times[2:]), 3)
        result["epoch_seconds_estimate"] = round(result["step_seconds"] * len(batches), 1)
        result["mean_target_length"] = round(float(np.mean([len(t) for t in tgt_ids])), 1)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/bench-ref", help="a trained run, for the beam sizes")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "FACTOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.run_dir)))
        return
    plan = [("corpus", f) for f in (1, 2, 4)] + [("batch", f) for f in (1, 2, 4, 8)] + \
           [("length", f) for f in (1, 2, 4)] + [("beam", f) for f in (1, 2, 4, 8, 16)]
    rows = []
    for kind, factor in plan:
        out = subprocess.run([sys.executable, __file__, "--run-dir", args.run_dir, "--worker", kind,
                              str(factor)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "cost_growth", "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    for kind in ("corpus", "batch", "length", "beam"):
        part = [r for r in rows if r["kind"] == kind]
        key = "seconds" if kind == "beam" else ("epoch_seconds_estimate" if kind == "corpus" else "step_seconds")
        growth = ", ".join(f"x{r['factor']}: {r[key] / part[0][key]:.2f}x time, {r['peak_rss_mib']} MiB"
                           for r in part)
        print(f"cost_growth {kind}: {growth}")


if __name__ == "__main__":
    main()
