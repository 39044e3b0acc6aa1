"""What a large corpus costs nmt-train: preparation time, time to the first step and peak memory.

For each size, a synthetic corpus is made from the bundled Multi30k (random pairs of its
sentence pairs joined two at a time, about 26 words a side, as in news text) and
``nmt-train configs/demo.yaml`` (float32) trains 2 steps on it three times:

- ``first``: a new run, nothing prepared (the preparation goes to a shared data.cache_dir);
- ``second``: another new run on the same data, which maps that preparation;
- ``resume``: ``--resume`` of the first run for 2 more steps, started from another directory.

Each command's wall time, its time to the first step (from its train.log: the line logged
just before the training loop), its peak resident memory (wait4) and, sampled every 50 ms
from /proc, the largest anonymous and file-backed parts of it (mapped corpus pages count in
RSS but are the page cache's, shared between processes). Also the prepared folder's size on
disk and the preparation's own time. ``--baseline DIR`` runs a checkout of older code on the
same corpora (first start only) back to back, for ratios; ``multi30k`` is the bundled corpus
itself (old and new alternately, ``--repeats`` times, medians).

    python benchmarks/corpus_scale.py [--pairs 100000,1000000,5000000] [--work /tmp/corpus-scale]
        [--baseline /tmp/old --baseline-pairs 100000,1000000] [--repeats 3] [--set KEY=VALUE ...]

``--set`` adds config overrides to every run (``--set data.subword_sampling=0.1``: the cost of
sampled segmentations; run it and a run without back to back for ratios).

Prints one JSON object (with benchmarks/machine.py's description), then a Markdown table.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402

DEMO = ["--set", "data.max_len=200", "--set", "train.max_steps=2", "--set", "train.precision=fp32",
        "--set", "train.valid_every=1000", "--set", "train.checkpoint_every_minutes=0", "--no-test"]


def make_corpus(prefix: Path, pairs: int) -> None:
    """``pairs`` random pairs of Multi30k training pairs, each pair's sentences joined by a space."""
    if all(Path(f"{prefix}.{lang}").is_file() for lang in ("de", "en")):
        return
    sides = {lang: (ROOT / "data/multi30k" / f"train.{lang}").read_text(encoding="utf-8").splitlines()
             for lang in ("de", "en")}
    rng = np.random.default_rng(pairs)
    first, second = rng.integers(0, 29000, pairs), rng.integers(0, 29000, pairs)
    for lang, lines in sides.items():
        tmp = Path(f"{prefix}.{lang}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for start in range(0, pairs, 100_000):
                f.write("".join(f"{lines[a]} {lines[b]}\n" for a, b in
                                zip(first[start:start + 100_000], second[start:start + 100_000])))
        tmp.rename(f"{prefix}.{lang}")


def _sample_memory(pid: int, peaks: dict, done: threading.Event) -> None:
    while not done.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("RssAnon", "RssFile", "RssShmem"):
                        peaks[key] = max(peaks.get(key, 0), int(value.split()[0]) // 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        done.wait(0.05)


def _first_step_at(log: Path, since: float) -> float | None:
    """Seconds from ``since`` to the log line written just before the training loop."""
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if " parameters on " in ln]
    if not lines:
        return None
    stamp = datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return round(stamp - since, 2)


def run_train(command: list[str], run_dir: Path, cwd: Path) -> dict:
    """Run one nmt-train command; its wall time, time to the first step and memory."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    start = time.time()
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks, done = {}, threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(child.pid, peaks, done), daemon=True)
    sampler.start()
    output = []
    reader = threading.Thread(target=lambda: output.append(child.stdout.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.time() - start
    done.set()
    reader.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"failed ({child.returncode}): {' '.join(command)}\n"
                         f"{output[0].decode(errors='replace')[-3000:]}")
    return {"wall_s": round(wall, 2), "to_first_step_s": _first_step_at(run_dir / "train.log", start),
            "peak_rss_mb": usage.ru_maxrss // 1024, "peak_anon_mb": peaks.get("RssAnon"),
            "peak_file_mb": peaks.get("RssFile")}


def nmt_train(checkout: Path, *args: str) -> list[str]:
    return [sys.executable, str(checkout / "scripts" / "train.py"), str(checkout / "configs/demo.yaml"), *args]


def measure_size(pairs: int, work: Path, baseline: Path | None, extra: list[str] = ()) -> dict:
    prefix = work / f"pairs{pairs}"
    start = time.time()
    make_corpus(prefix, pairs)
    row = {"pairs": pairs, "corpus_mb": round(sum(Path(f"{prefix}.{lang}").stat().st_size
                                                  for lang in ("de", "en")) / 2**20, 1),
           "made_in_s": round(time.time() - start, 1)}
    cache, runs = work / f"cache{pairs}", work / f"runs{pairs}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    data = ["--set", f"data.train={prefix}", "--set", f"data.cache_dir={cache}", *extra]
    if baseline is not None:
        row["baseline_first"] = run_train(nmt_train(baseline, "--run-dir", str(runs / "old"),
                                                    "--set", f"data.train={prefix}", *DEMO), runs / "old", ROOT)
    row["first"] = run_train(nmt_train(ROOT, "--run-dir", str(runs / "a"), *data, *DEMO), runs / "a", ROOT)
    row["second"] = run_train(nmt_train(ROOT, "--run-dir", str(runs / "b"), *data, *DEMO), runs / "b", ROOT)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    resume = [sys.executable, str(ROOT / "scripts" / "train.py"), "--run-dir", str(runs / "a"), "--resume",
              "--set", "train.max_steps=4", "--no-test", *extra]
    row["resume"] = run_train(resume, runs / "a", elsewhere)
    folder = next(cache.glob("corpus-*"))
    meta = json.loads((folder / "meta.json").read_text())
    row.update(prepare_s=meta["seconds"], kept=meta["pairs"],
               cache_mb=round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1))
    shutil.rmtree(runs, ignore_errors=True)
    return row


def multi30k(work: Path, baseline: Path | None, repeats: int) -> dict:
    """The bundled corpus, first start: this code and the baseline alternately."""
    times = {"new": [], "old": []}
    for k in range(repeats):
        for name, checkout in (("old", baseline), ("new", ROOT)):
            if checkout is None:
                continue
            run = work / f"m30k-{name}-{k}"
            shutil.rmtree(run, ignore_errors=True)
            times[name].append(run_train(nmt_train(checkout, "--run-dir", str(run), *DEMO), run, ROOT))
            shutil.rmtree(run, ignore_errors=True)
    median = lambda rows, key: statistics.median(r[key] for r in rows) if rows else None  # noqa: E731
    return {name: {key: median(rows, key) for key in ("wall_s", "to_first_step_s", "peak_rss_mb")}
            for name, rows in times.items() if rows} | {"repeats": repeats}


def table(rows: list[dict]) -> str:
    lines = ["| pairs | preparation | first start: to step 1 / peak RSS (file-backed) | second run | "
             "resume | cache on disk | before (first start) |", "| ---: | ---: | --- | --- | --- | ---: | --- |"]
    cell = lambda r: f"{r['to_first_step_s']:.1f} s / {r['peak_rss_mb'] / 1024:.2f} GB ({r['peak_file_mb'] / 1024:.2f})"  # noqa: E731
    for row in rows:
        before = cell(row["baseline_first"]) if "baseline_first" in row else "-"
        lines.append(f"| {row['pairs']:,} | {row['prepare_s']:.0f} s | {cell(row['first'])} | "
                     f"{cell(row['second'])} | {cell(row['resume'])} | {row['cache_mb']:,.0f} MiB | {before} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="100000,1000000,5000000")
    parser.add_argument("--work", default="/tmp/corpus-scale",
                        help="corpora, caches and runs (kept corpora are reused)")
    parser.add_argument("--baseline", help="a checkout of older code to compare with (first start)")
    parser.add_argument("--baseline-pairs", default="100000,1000000", help="sizes the baseline runs at")
    parser.add_argument("--repeats", type=int, default=3, help="Multi30k runs per code version")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run of this code (repeatable)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    baseline = Path(args.baseline).resolve() if args.baseline else None
    old_sizes = {int(p) for p in args.baseline_pairs.split(",")} if baseline else set()
    result = {"multi30k": multi30k(work, baseline, args.repeats), "sizes": []}
    for pairs in (int(p) for p in args.pairs.split(",")):
        extra = [item for kv in args.set for item in ("--set", kv)]
        result["sizes"].append(measure_size(pairs, work, baseline if pairs in old_sizes else None, extra))
        print(json.dumps(result["sizes"][-1]), file=sys.stderr, flush=True)
    result["set"] = args.set
    result["machine"] = describe("cpu")
    print(json.dumps(result, indent=1))
    print(table(result["sizes"]))


if __name__ == "__main__":
    main()
