"""Sentences per second through ``nmt-serve`` with 1, 8 and 64 concurrent clients, against
``nmt-translate`` on the same sentences.

Each client sends one sentence per request and waits for its answer before sending the
next, as interactive users do; with more clients the server batches their requests
together. The server is a real ``nmt-serve`` process on a free port; the clients are
aiohttp coroutines in this process. Every client count first runs one untimed pass over
the same sentences (shapes seen, memory allocated), then ``--repeats`` timed passes; the
median is reported. ``nmt-translate`` is timed as a user runs it (one process, file in,
file out, model loading included) and, for the decoding alone, through ``Translator.translate``
in this process at the same beam. Prints one JSON object (with benchmarks/machine.py's
description), then a one-line summary.

    python benchmarks/serve_speed.py RUN_DIR [--sentences 500] [--clients 1,8,64] [--repeats 3]
        [--beam-size 5] [--threads 2] [--test data/multi30k/test2016.de]
"""
import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiohttp  # noqa: E402
import torch  # noqa: E402

from machine import describe  # noqa: E402
from nmt.io import read_lines  # noqa: E402
from nmt.translate import Translator  # noqa: E402


async def _clients(url: str, sentences: list[str], clients: int, beam: int) -> list[str]:
    out: list[str] = [""] * len(sentences)

    async def client(session: aiohttp.ClientSession, mine: range) -> None:
        for i in mine:
            async with session.post(url, json={"sentences": [sentences[i]], "beam_size": beam}) as r:
                out[i] = (await r.json())["translations"][0]

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, range(c, len(sentences), clients)) for c in range(clients)))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(run_dir: str, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    server = subprocess.Popen([shutil.which("nmt-serve"), run_dir, "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"nmt-serve failed: {server.stderr.read().decode()}")
            time.sleep(0.2)
    server.kill()
    raise SystemExit("nmt-serve did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sentences", type=int, default=500, help="the first N lines of --test")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test", default=str(ROOT / "data/multi30k/test2016.de"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sentences = read_lines(args.test)[:args.sentences]
    result = {"run_dir": args.run_dir, "sentences": len(sentences), "beam_size": args.beam_size,
              "threads": args.threads, "serve": {}}

    translator = Translator.load(args.run_dir)
    reference = translator.translate(sentences, beam_size=args.beam_size)  # also the warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        translator.translate(sentences, beam_size=args.beam_size)
        times.append(time.perf_counter() - start)
    result["translate_api_sent_per_s"] = round(len(sentences) / statistics.median(times), 1)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.txt"
        source.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        start = time.perf_counter()
        subprocess.run([shutil.which("nmt-translate"), args.run_dir, "-i", str(source), "-o",
                        str(Path(tmp) / "out.txt"), "--beam-size", str(args.beam_size)], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        result["nmt_translate_command_sent_per_s"] = round(len(sentences) / (time.perf_counter() - start), 1)

    port = _free_port()
    server = _start_server(args.run_dir, port, args.threads)
    url = f"http://127.0.0.1:{port}/translate"
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            got = asyncio.run(_clients(url, sentences, clients, args.beam_size))  # untimed pass
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                got = asyncio.run(_clients(url, sentences, clients, args.beam_size))
                times.append(time.perf_counter() - start)
            result["serve"][str(clients)] = {
                "sent_per_s": round(len(sentences) / statistics.median(times), 1),
                "same_as_translate": got == reference}
    finally:
        server.terminate()
        server.wait(30)
    result["machine"] = describe("cpu")
    print(json.dumps(result, indent=2))
    serve = ", ".join(f"{c} clients {v['sent_per_s']}" for c, v in result["serve"].items())
    print(f"sent/s: nmt-serve {serve}; Translator.translate {result['translate_api_sent_per_s']}; "
          f"nmt-translate command {result['nmt_translate_command_sent_per_s']}", file=sys.stderr)


if __name__ == "__main__":
    main()
