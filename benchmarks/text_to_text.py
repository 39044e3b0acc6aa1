"""Raw text in, raw text out at a given batch size: ``Translator.translate`` over a file,
greedy and beam 5, the median of --repeats passes after an untimed one. It uses nothing newer
than ``Translator.load(run).translate(lines, beam_size=, batch_size=)``, so the same script
times an older checkout back to back with this one (decode_speed.py imports this checkout):

    PYTHONPATH=OLD_CHECKOUT python benchmarks/text_to_text.py OLD_RUN SOURCES --label old
    python benchmarks/text_to_text.py RUN SOURCES --label new

Prints one JSON object with the machine (benchmarks/machine.py) and the nmt it imported.
"""
import argparse
import json
import statistics
import time

import torch

import nmt
from machine import describe
from nmt.translate import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("sources", help="a raw text file, one sentence per line")
    parser.add_argument("--label", default="", help="a name for this code in the JSON")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.sources, encoding="utf-8") as f:
        sources = f.read().splitlines()
    translator = Translator.load(args.run_dir)
    results = []
    for beam in map(int, args.beams.split(",")):
        options = {"beam_size": beam, "batch_size": args.batch_size}
        translator.translate(sources, **options)  # every shape seen before the timed passes
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            translator.translate(sources, **options)
            seconds.append(time.perf_counter() - start)
        results.append({"beam": beam, "sentences": len(sources),
                        "sent_per_s": round(len(sources) / statistics.median(seconds), 1),
                        "seconds_all": [round(s, 3) for s in seconds]})
    print(json.dumps({"benchmark": "text_to_text", "label": args.label, "nmt": nmt.__file__,
                      "run_dir": args.run_dir, "batch_size": args.batch_size,
                      "machine": describe("cpu"), "results": results}, indent=2))


if __name__ == "__main__":
    main()
