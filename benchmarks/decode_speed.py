"""Decoding speed and BLEU of one trained run on its test set: greedy and beam 5, float32 and int8.

For each mode and beam size: one untimed pass over the whole test set at the
same batch size and beam (so every shape that is timed has been seen:
kernels chosen, memory allocated), then --repeats timed passes of decoding
alone -- source piece ids in, hypotheses (piece ids) out, through
``nmt.translate.decode_corpus`` as ``Translator`` calls it -- with
torch.cuda.synchronize() around each on a GPU. ``sent_per_s`` is the test
set divided by the median pass. Then --repeats timed passes through
``Translator.translate`` (raw text in, raw text out, sentencepiece included)
give ``end_to_end_sent_per_s`` (the median) and the translations that are scored: BLEU
and chrF with sacreBLEU against the raw reference. Model loading is never
timed. Prints one JSON object (with benchmarks/machine.py's description),
then a one-line summary per mode and beam.

    python benchmarks/decode_speed.py RUN_DIR [--threads 2] [--device cpu] [--modes fp32,int8,onnx,onnx-int8]
        [--beams 1,5] [--batch-size 64] [--repeats 3] [--test PREFIX]

Mode ``graphs`` decodes with ``decode.cuda_graphs`` (captured decoder steps on a GPU;
the capture pass is the untimed one); listed after fp32, its result says whether its
pieces and scores equal fp32's (``same_as_fp32``); so does every mode after fp32, with
the number of sentences whose pieces differ and the largest score difference of the rest.
"""
import argparse
import json
import resource
import statistics
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
from nmt.report import corpus_scores  # noqa: E402
from nmt.translate import Engine, Translator, decode_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="fp32,int8", help="fp32, int8 (CPU only; without "
                        "fast int8 products onnxruntime's int8, or declined without the onnx extra), "
                        "int8-forced (PyTorch's int8 even there) and/or graphs (fp32 with decode.cuda_graphs; "
                        "after fp32, it reports whether its output is fp32's), onnx and onnx-int8 "
                        "(RUN_DIR a model folder written by nmt-export --onnx: onnxruntime)")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the test set (median)")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--test", help="test set prefix (default: the run's data.test, "
                        "else data/multi30k/test2016)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    results, eager = [], {}  # eager: fp32's hypotheses per beam
    for mode in args.modes.split(","):
        onnx = mode.startswith("onnx")  # a model folder with ONNX graphs (nmt-export --onnx)
        translator = Translator.load(args.run_dir, args.checkpoint, args.device, int8=mode in ("int8", "onnx-int8"),
                                     backend="onnx" if onnx else "torch")
        if mode == "int8-forced":  # what int8 would cost where Translator declines it (no VNNI)
            translator.model = translator.run.model = quantize_int8(translator.model)
            translator.engine = Engine("pytorch", "int8")
        # Without fast int8 kernels, Translator decodes int8 on onnxruntime (ONNX graphs made in
        # memory) or, without the onnx extra, declines it and decodes in float32.
        engine = str(getattr(translator, "engine", ""))  # absent before nmt.translate.Engine
        ran = mode if onnx or not engine else {"pytorch float32": "fp32", "pytorch int8": "int8",
                                               "onnxruntime int8": "onnx-int8"}[engine]
        cfg = translator.run.cfg
        test = args.test or cfg.data.test or str(ROOT / "data" / "multi30k" / "test2016")
        sources, references = load_split(cfg.data, test, "test")
        ids = translator.src_vocab.encode([s for s in sources if s.strip()])
        graphs = mode == "graphs"
        for beam in map(int, args.beams.split(",")):
            options = {"beam_size": beam, "batch_size": args.batch_size, "cuda_graphs": graphs}
            settings = translator.settings(n_best=1, **options)
            translator.translate(sources, **options)  # warm-up (and the graphs' capture), untimed
            seconds = []
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                found = decode_corpus(translator.model, ids, settings, translator.device)
                sync()
                seconds.append(time.perf_counter() - start)
            whole = []  # text to text, as often as decoding alone: one pass is too noisy
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                hyps = translator.translate(sources, **options)
                sync()
                whole.append(time.perf_counter() - start)
            end_to_end = statistics.median(whole)
            median = statistics.median(seconds)
            pieces = sum(len(h[0].tokens) for h in found)
            timed_text = translator.tgt_vocab.decode([h[0].tokens for h in found])
            scores = corpus_scores(hyps, references)
            found_pairs = [(h[0].tokens, h[0].score) for h in found]
            if mode == "fp32":
                eager[beam] = found_pairs
            same = {}
            if mode != "fp32" and beam in eager:  # how far this mode's output is from PyTorch float32's
                pairs = list(zip(found_pairs, eager[beam]))
                same = {"same_as_fp32": found_pairs == eager[beam],
                        "sentences_differing_from_fp32": sum(a[0] != b[0] for a, b in pairs),
                        "max_score_difference_from_fp32": round(max(
                            (abs(a[1] - b[1]) for a, b in pairs if a[0] == b[0]), default=0), 6)}
            results.append({"mode": mode, "mode_run": ran, "beam": beam, "sentences": len(sources),
                            "seconds": round(median, 4), "seconds_all": [round(s, 4) for s in seconds],
                            "sent_per_s": round(len(sources) / median, 1),
                            "tgt_pieces_per_s": round(pieces / median, 1),
                            "end_to_end_seconds": round(end_to_end, 4),
                            "end_to_end_sent_per_s": round(len(sources) / end_to_end, 1),
                            "timed_output_is_scored_output":
                                timed_text == [h for s, h in zip(sources, hyps) if s.strip()],
                            "bleu": scores["bleu"], "chrf": scores["chrf"],
                            "bleu_signature": scores["bleu_signature"], **same})
    machine = describe(args.device)
    result = {"benchmark": "decode_speed", "date": time.strftime("%Y-%m-%d"), "machine": machine,
              "torch": torch.__version__, "run_dir": args.run_dir, "checkpoint": args.checkpoint,
              "step": translator.run.step, "batch_size": args.batch_size, "repeats": args.repeats,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "results": results}
    if cuda:
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    print(json.dumps(result, indent=2))
    for r in results:
        ran = r["mode"] if r["mode_run"] == r["mode"] else f"{r['mode']} (ran as {r['mode_run']})"
        print(f"decode_speed: {ran} beam {r['beam']}: {r['sent_per_s']} sentences/s decoding, "
              f"{r['end_to_end_sent_per_s']} text to text, BLEU {r['bleu']} "
              f"(batch {args.batch_size}, {summary(machine)})")


if __name__ == "__main__":
    main()
