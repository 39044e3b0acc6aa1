"""Batch invariance, checked on one trained run: every sentence decoded in batches of
several sizes, its pieces and score compared bit for bit with those of the first size.

The sentences are the run's test and validation sources (repeated up to --sentences).
Modes: greedy, beam5, beam5-norepeat (no_repeat_ngram_size 2) and int8 (beam 5, the
row-wise int8 decoder of nmt.quantize, forced even where Translator would decline it;
CPU only). On a GPU (--device cuda) this is the GPU's check: nmt.invariant's arithmetic
is the same code there, but its invariance has been measured on CPUs only.

Prints one JSON object (the machine, and per mode and batch size the sentences whose
pieces differ, whose scores differ, and sentences/s of that pass) and a one-line
summary; exits 1 if any sentence differs.

    python benchmarks/batch_invariance.py RUN_DIR [--device cpu] [--threads 2]
        [--sentences 2000] [--batch-sizes 1000,64,7,1] [--modes greedy,beam5,beam5-norepeat,int8]
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from machine import describe, summary  # noqa: E402
from nmt.data import load_split  # noqa: E402
from nmt.quantize import quantize_int8  # noqa: E402
from nmt.translate import Translator, decode_corpus  # noqa: E402

MODES = {"greedy": {"beam_size": 1}, "beam5": {"beam_size": 5},
         "beam5-norepeat": {"beam_size": 5, "no_repeat_ngram_size": 2}, "int8": {"beam_size": 5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="1000,64,7,1")
    parser.add_argument("--modes", default="greedy,beam5,beam5-norepeat,int8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    translator = Translator.load(args.run_dir, device=args.device)
    data = translator.run.cfg.data
    sources = [s for split in (data.test, data.valid) if split
               for s in load_split(data, split, "test")[0] if s.strip()]
    sources = (sources * (args.sentences // max(1, len(sources)) + 1))[:args.sentences]
    ids = translator.src_vocab.encode(sources)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    results, differing = [], 0
    for mode in args.modes.split(","):
        if mode == "int8" and args.device != "cpu":
            continue
        model = quantize_int8(Translator.load(args.run_dir).model) if mode == "int8" else translator.model
        reference = None
        for size in sizes:
            decode = translator.settings(batch_size=size, n_best=1, **MODES[mode])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            found = [[(h.tokens, h.score) for h in hyps]
                     for hyps in decode_corpus(model, ids, decode, args.device, never=translator.tgt_vocab.control_ids)]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            reference = reference or found
            pieces = sum(a[0][0] != b[0][0] for a, b in zip(found, reference))
            scores = sum(a[0][1] != b[0][1] for a, b in zip(found, reference))
            differing += scores + pieces
            results.append({"mode": mode, "batch_size": size, "sentences": len(ids), "pieces_differ": pieces,
                            "scores_differ": scores, "sent_per_s": round(len(ids) / seconds, 1)})
    info = describe(args.device)
    print(json.dumps({"machine": info, "reference_batch_size": sizes[0], "results": results}, indent=2))
    print(f"batch_invariance: {len(ids)} sentences x batch sizes {sizes} x {args.modes}: "
          f"{differing} differences ({summary(info)})")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
