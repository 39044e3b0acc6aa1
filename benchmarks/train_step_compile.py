"""A training step eager and under torch.compile (and, on a GPU, CUDA graphs), side by side.

The model is nmt's own (``nmt.model.Seq2Seq``) in the reference setting of
train_speed.py, with the decoder chosen by --decoder: ``feed`` (Luong, input
feeding: the step-by-step loop), ``nofeed`` (Luong, each layer one recurrent call
over all steps) or ``gnmt``. Batches are cut from Multi30k en->de training lengths
as ceiling.py cuts them (random ids: only lengths affect speed), and the same
--steps batches are timed in every mode. Modes:

  eager            the step as nmt runs it;
  compile          torch.compile(model.decoder, dynamic=True): one compiled graph for all
                   lengths (the encoder stays eager: its packing is planned on the host);
  reduce-overhead  torch.compile(model.decoder, mode="reduce-overhead"): CUDA graphs, one per
                   batch shape (GPU only).

Each mode has one untimed pass over exactly the timed batches (compilation and
capture happen there; its seconds are reported as ``first_pass_s``), then --repeats
timed passes; the median gives target pieces/s. Prints one JSON object (machine,
torch) and a summary line per mode.

    python benchmarks/train_step_compile.py --device cuda --decoder gnmt --batch-tokens 16384
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from ceiling import DATA, SRC, TGT, cut_batches, piece_lengths, timed, train_batch, training_pass  # noqa: E402
from machine import describe, summary  # noqa: E402
from nmt.config import config_from_dict  # noqa: E402
from nmt.model import Seq2Seq  # noqa: E402

DECODERS = {"feed": {"input_feeding": True}, "nofeed": {"input_feeding": False},
            "gnmt": {"input_feeding": False, "decoder": "gnmt"}}
REFERENCE = {"embedding_size": 256, "encoder_layers": 2, "encoder_hidden_size": 256, "decoder_layers": 2,
             "decoder_hidden_size": 512, "attention": "general", "dropout": 0.3, "tie_output": False,
             "share_embeddings": False}


def measure(mode: str, args, batches: list[dict], device: torch.device) -> dict:
    torch.manual_seed(1)
    model = Seq2Seq(config_from_dict({"model": dict(REFERENCE, **DECODERS[args.decoder])}).model,
                    8000, 8000).to(device).train()
    if mode == "compile":  # the decoder: the encoder's packing is planned on the host, in numpy
        model.decoder = torch.compile(model.decoder, dynamic=True)
    elif mode == "reduce-overhead":
        model.decoder = torch.compile(model.decoder, mode="reduce-overhead")
    run = model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    seconds = timed(lambda: training_pass(run, model, optimizer, batches), args.repeats, device)  # its
    # untimed first pass compiles every shape
    first = time.perf_counter() - start - sum(seconds)
    pieces = sum(b["pieces"] for b in batches)
    median = statistics.median(seconds)
    return {"mode": mode, "first_pass_s": round(first, 2), "seconds_per_step": round(median / len(batches), 4),
            "tgt_pieces_per_s": round(pieces / median, 1),
            "tgt_pieces_per_s_all": [round(pieces / s, 1) for s in seconds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decoder", choices=DECODERS, default="gnmt")
    parser.add_argument("--modes", default="eager,compile", help="eager, compile, reduce-overhead (GPU)")
    parser.add_argument("--batch-sentences", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=0, help="batches of about T tokens instead")
    parser.add_argument("--steps", type=int, default=20, help="batches (shapes) in a pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spm", help="nmt's sentencepiece model: real piece counts (else word counts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(1)
    src_lens, tgt_lens = (piece_lengths(DATA / "train", lang, args.spm) for lang in (SRC, TGT))
    longer = np.maximum(src_lens, tgt_lens)
    keep = (longer <= 100) & (longer <= 3 * np.minimum(src_lens, tgt_lens))
    src_lens, tgt_lens = src_lens[keep], tgt_lens[keep]
    cut = cut_batches(src_lens, tgt_lens, args.batch_sentences, args.batch_tokens, rng)
    picked = rng.choice(len(cut), size=min(args.steps, len(cut)), replace=False)
    batches = [train_batch(src_lens[cut[j]], tgt_lens[cut[j]], rng, device) for j in picked]
    for b in batches:  # nmt's training passes the lengths as a host array (packing is planned there)
        b["lengths"] = b["lengths"].numpy()
    results = [measure(mode, args, batches, device) for mode in args.modes.split(",")]
    eager = next((r["tgt_pieces_per_s"] for r in results if r["mode"] == "eager"), None)
    for r in results:
        r["vs_eager"] = round(r["tgt_pieces_per_s"] / eager, 3) if eager else None
    machine = describe(device)
    batch = f"{args.batch_tokens} tokens" if args.batch_tokens else f"{args.batch_sentences} sentences"
    print(json.dumps({"benchmark": "train_step_compile", "date": time.strftime("%Y-%m-%d"), "machine": machine,
                      "torch": torch.__version__, "decoder": args.decoder, "steps": len(batches), "batch": batch,
                      "repeats": args.repeats, "results": results}, indent=2))
    for r in results:
        print(f"train_step_compile: {args.decoder} {r['mode']}: {r['tgt_pieces_per_s']} target pieces/s "
              f"({r['vs_eager']} x eager; first pass {r['first_pass_s']} s) ({summary(machine)})")


if __name__ == "__main__":
    main()
