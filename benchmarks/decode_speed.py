"""Decoding speed and BLEU of one trained run on its test set: greedy and beam 5, float32 and int8.

Sentences/s is the test set divided by the translation time (model loading
and one warm-up batch excluded); BLEU is sacreBLEU against the raw reference.
Prints one JSON object, then a one-line summary per mode.

    python benchmarks/decode_speed.py RUN_DIR [--threads 2] [--device cpu] [--modes fp32,int8]
"""
import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nmt.data import load_split  # noqa: E402
from nmt.report import corpus_scores  # noqa: E402
from nmt.translate import Translator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="fp32,int8", help="fp32 and/or int8 (CPU only)")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--test", help="test set prefix (default: the run's data.test, "
                        "else data/multi30k/test2016)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for mode in args.modes.split(","):
        translator = Translator.load(args.run_dir, args.checkpoint, args.device, int8=mode == "int8")
        cfg = translator.run.cfg
        test = args.test or cfg.data.test or str(ROOT / "data" / "multi30k" / "test2016")
        sources, references = load_split(cfg.data, test, "test")
        for beam in map(int, args.beams.split(",")):
            translator.translate(sources[:args.batch_size], beam_size=beam, batch_size=args.batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            hyps = translator.translate(sources, beam_size=beam, batch_size=args.batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            pieces = sum(len(p) for p in translator.tgt_vocab.encode(hyps))
            scores = corpus_scores(hyps, references)
            results.append({"mode": mode, "beam": beam, "sentences": len(sources),
                            "seconds": round(seconds, 2),
                            "sent_per_s": round(len(sources) / seconds, 1),
                            "tgt_pieces_per_s": round(pieces / seconds, 1),
                            "bleu": scores["bleu"], "chrf": scores["chrf"],
                            "bleu_signature": scores["bleu_signature"]})
    result = {"benchmark": "decode_speed", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {args.threads} threads, "
                         f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}",
              "torch": torch.__version__, "run_dir": args.run_dir, "checkpoint": args.checkpoint,
              "step": translator.run.step, "batch_size": args.batch_size,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "results": results}
    print(json.dumps(result, indent=2))
    for r in results:
        print(f"decode_speed: {r['mode']} beam {r['beam']}: {r['sent_per_s']} sentences/s, "
              f"BLEU {r['bleu']} ({result['machine']})")


if __name__ == "__main__":
    main()
