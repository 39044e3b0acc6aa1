"""Peak memory and speed of ``nmt-translate`` as the input grows: streaming keeps memory flat.

For each input length, the lines of ``--source`` are repeated to that many lines, piped
into ``nmt-translate RUN_DIR`` (stdin to stdout, as in ``zcat big.de.gz | nmt-translate
run > big.en``), and the command's peak resident memory (its own, from wait4) and
sentences per second (wall time of the whole command, model loading included) are
recorded. Prints one JSON object (with benchmarks/machine.py's description), then a
one-line summary per length.

    python benchmarks/stream_memory.py RUN_DIR [--lines 10000,100000,1000000] [--beam-size 1]
        [--source data/multi30k/test2016.de] [--threads 2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402


def measure(run_dir: str, lines: list[str], n: int, beam: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([shutil.which("nmt-translate"), run_dir, "--beam-size", str(beam)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    counted = [0]

    def feed():  # the input is generated as it is written: this process holds none of it
        block = "".join(s + "\n" for s in lines).encode()
        whole, rest = divmod(n, len(lines))
        for _ in range(whole):
            proc.stdin.write(block)
        proc.stdin.write("".join(s + "\n" for s in lines[:rest]).encode())
        proc.stdin.close()

    def drain():
        for _ in proc.stdout:
            counted[0] += 1

    start = time.perf_counter()
    threads_ = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads_:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    for t in threads_:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0 and counted[0] == n, (proc.returncode, counted[0], n)
    return {"lines": n, "seconds": round(seconds, 1), "sent_per_s": round(n / seconds, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--lines", default="10000,100000,1000000")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--source", default=str(ROOT / "data/multi30k/test2016.de"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    lines = Path(args.source).read_text(encoding="utf-8").splitlines()
    runs = []
    for n in (int(x) for x in args.lines.split(",")):
        runs.append(measure(args.run_dir, lines, n, args.beam_size, args.threads))
        print(f"{n:,} lines: {runs[-1]['sent_per_s']} sent/s, peak RSS {runs[-1]['peak_rss_mib']} MiB",
              file=sys.stderr, flush=True)
    print(json.dumps({"run_dir": args.run_dir, "source": args.source, "beam_size": args.beam_size,
                      "threads": args.threads, "runs": runs, "machine": describe("cpu")}, indent=2))


if __name__ == "__main__":
    main()
