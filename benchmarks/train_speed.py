"""Training throughput in the project's reference setting (Multi30k en->de).

Joint sentencepiece BPE 8,000; embeddings 256 (not shared or tied); encoder
2 x bidirectional LSTM 256 per direction; decoder 2 x LSTM 512, Luong general
attention, input feeding; dropout 0.3; Adam 1e-3; batches of 64 sentences;
clip 1.0; no label smoothing; 2 torch threads; train.precision as configured
(auto: bf16 autocast on a CPU with native bf16; pass --set
train.precision=fp32 for float32). Training goes through
``nmt.train.train`` itself, so what is timed is what users run.

Target pieces are counted as the peers' harness counts them: without end
markers or padding. Prints one JSON object, then a one-line summary.

    python benchmarks/train_speed.py --steps 200 [--run-dir runs/bench-ref] [--set key=value ...]
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import machine  # noqa: E402

from nmt.config import load_config  # noqa: E402
from nmt.device import pick_device, use_bf16  # noqa: E402
from nmt.train import train  # noqa: E402

REFERENCE = [
    "data.src_lang=en", "data.tgt_lang=de", "data.vocab_size=8000", "data.joint_vocab=true",
    "model.cell=lstm", "model.embedding_size=256", "model.encoder_layers=2",
    "model.encoder_hidden_size=256", "model.bidirectional=true", "model.decoder_layers=2",
    "model.decoder_hidden_size=512", "model.attention=general", "model.input_feeding=true",
    "model.dropout=0.3", "model.tie_output=false", "model.share_embeddings=false",
    "train.batch_size=64", "train.batch_unit=sentences", "train.lr=0.001", "train.warmup_steps=0",
    "train.clip_grad_norm=1.0", "train.label_smoothing=0.0", "train.threads=2",
    "train.patience=0", "train.log_every=50", "data.test=",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run-dir", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--validate", action="store_true", help="validate at the last step")
    parser.add_argument("--set", action="append", default=[], help="more config overrides")
    args = parser.parse_args()
    overrides = REFERENCE + [f"train.max_steps={args.steps}", f"train.device={args.device}",
                             f"train.valid_every={args.steps if args.validate else 10 ** 9}"]
    cfg = load_config(ROOT / "configs" / "multi30k_en_de.yaml", overrides + args.set)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        start = time.perf_counter()
        summary = train(cfg, run_dir)
        wall = time.perf_counter() - start
    pieces = summary.target_tokens - summary.sentences  # without end markers
    result = {
        "benchmark": "train_speed", "date": time.strftime("%Y-%m-%d"),
        "machine": machine.describe(args.device),  # after training: the settings (TF32, threads) it ran with
        "torch": torch.__version__,
        "precision": "bf16 autocast" if use_bf16(cfg.train.precision, pick_device(args.device)) else "fp32",
        "steps": summary.steps, "parameters": summary.parameters,
        "train_seconds": summary.train_seconds, "wall_seconds": round(wall, 1),
        "seconds_per_step": round(summary.train_seconds / summary.steps, 3),
        "tgt_pieces_per_s": round(pieces / summary.train_seconds, 1),
        "sentences_per_s": round(summary.sentences / summary.train_seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "overrides": args.set,
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    print(json.dumps(result, indent=2))
    print(f"train_speed: {result['tgt_pieces_per_s']} target pieces/s, {result['seconds_per_step']} s/step, "
          f"peak RSS {result['peak_rss_mib']} MiB ({result['precision']}, {result['steps']} steps, "
          f"{machine.summary(result['machine'])})")


if __name__ == "__main__":
    main()
