"""Time to the first translated line: ``echo SENTENCE | nmt-translate RUN`` as a whole process.

``whole_process_s``: the median of --repeats runs of the command (after one untimed run, so
that the files are in the page cache as they are for a user who translates twice), from
fork to exit, the translation read from its stdout. Then where that time goes, from a child
process that stamps each stage with time.perf_counter: Python's own start (``python -c
pass``), ``import torch``, the rest of the imports ``nmt-translate`` makes, loading the run
(``Translator.load``), the first sentence (first decoder step included) and the same
sentence again (what a warm process pays). Prints one JSON object with the machine.

    python benchmarks/first_line.py RUN [--sentence TEXT] [--repeats 5] [--beam-size 5]
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = r"""
import json, sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import nmt.cli, nmt.translate
t.append(time.perf_counter())
torch.set_num_threads(2)
translator = nmt.translate.Translator.load(sys.argv[1])
t.append(time.perf_counter())
first = translator.translate(sys.argv[2], beam_size=int(sys.argv[3]))
t.append(time.perf_counter())
translator.translate(sys.argv[2], beam_size=int(sys.argv[3]))
t.append(time.perf_counter())
names = ("import_torch_s", "import_nmt_s", "load_s", "first_sentence_s", "warm_sentence_s")
print(json.dumps({**{n: round(b - a, 4) for n, a, b in zip(names, t, t[1:])}, "output": first}))
"""


def timed(command: list[str], stdin: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(command, input=stdin, capture_output=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sentence", default="Ein Hund läuft durch den Schnee.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()
    command = [shutil.which("nmt-translate"), args.run_dir, "--beam-size", str(args.beam_size)]
    stdin = (args.sentence + "\n").encode("utf-8")
    timed(command, stdin)  # untimed: the page cache
    runs = [timed(command, stdin) for _ in range(args.repeats)]
    python = [timed([sys.executable, "-c", "pass"], b"")[0] for _ in range(args.repeats)]
    stages = [json.loads(subprocess.run(
        [sys.executable, "-c", STAGES, args.run_dir, args.sentence, str(args.beam_size)],
        capture_output=True, check=True, text=True).stdout) for _ in range(args.repeats)]
    from machine import describe
    result = {
        "command": " ".join(["echo", repr(args.sentence), "|", "nmt-translate", *command[1:]]),
        "output": runs[0][1].decode("utf-8").rstrip("\n"),
        "whole_process_s": round(statistics.median(r[0] for r in runs), 3),
        "whole_process_runs_s": [round(r[0], 3) for r in runs],
        "python_start_s": round(statistics.median(python), 4),
        **{key: statistics.median(s[key] for s in stages) for key in stages[0] if key != "output"},
        "machine": describe("cpu"),
    }
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
