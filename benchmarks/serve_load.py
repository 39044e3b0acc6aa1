"""``nmt-serve`` under hostile load: does every small request still get its answer in time?

A real ``nmt-serve`` process on a free loopback port (nothing else is ever addressed)
and ``--clients`` concurrent clients for ``--seconds``, each client, in turn:

- *normal*: 1-3 short sentences; its latency is recorded (the requests that count);
- *huge*: as many long sentences as the server takes in one request, a long output allowed;
- *abandoned*: a huge request whose client hangs up after 0.2 s;
- *slowloris*: a raw socket that sends its request's headers a byte every 0.5 s, then
  gives up.

Every loop is bounded in time and ends by itself. Afterwards: ``/health``, the server's
peak RSS (VmHWM from /proc), and whether every normal request was answered (200) within
the server's ``--request-timeout-s``. Prints one JSON object; exit status 1 if a normal
request failed or came late, or /health is not ok.

    python benchmarks/serve_load.py RUN_DIR [--clients 64] [--seconds 120] [--timeout 30]
"""
import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiohttp  # noqa: E402

from machine import describe  # noqa: E402

WORDS = "ein Hund läuft durch den Schnee und eine Frau sitzt auf der Bank im Park".split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run_dir: str, port: int, timeout: float, max_sentences: int) -> subprocess.Popen:
    command = [shutil.which("nmt-serve") or "nmt-serve", run_dir, "--port", str(port),
               "--request-timeout-s", str(timeout), "--max-sentences", str(max_sentences)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, OMP_NUM_THREADS="2"))
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"nmt-serve failed: {server.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("nmt-serve did not start within 120 s")


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


async def _client(url: str, kind: str, rng: random.Random, until: float, stats: dict, huge: int) -> None:
    port = int(url.rsplit(":", 1)[1])
    timeout = aiohttp.ClientTimeout(total=max(until - time.monotonic(), 1) + 60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < until:
            if kind == "normal":
                body = {"sentences": [_sentence(rng, rng.randint(4, 12)) for _ in range(rng.randint(1, 3))]}
                start = time.monotonic()
                try:
                    async with session.post(f"{url}/translate", json=body) as response:
                        answer = await response.json()
                        ok = response.status == 200 and len(answer["translations"]) == len(body["sentences"])
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    ok = False
                stats["latency"].append(time.monotonic() - start)
                stats["normal_ok" if ok else "normal_failed"] += 1
            elif kind in ("huge", "abandoned"):
                body = {"sentences": [_sentence(rng, 40) for _ in range(huge)], "max_length_ratio": 4.0}
                try:
                    async with session.post(f"{url}/translate", json=body,
                                            timeout=aiohttp.ClientTimeout(total=0.2 if kind == "abandoned" else None)
                                            ) as response:
                        stats[f"{kind}_status_{response.status}"] += 1
                        await response.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    stats[f"{kind}_gave_up"] += 1
            else:  # slowloris: headers a byte at a time, never finished
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    head = b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                    for byte in head[:20]:
                        if time.monotonic() >= until:
                            break
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.5)
                    writer.close()
                    stats["slowloris"] += 1
                except OSError:
                    stats["slowloris_refused"] += 1
            await asyncio.sleep(rng.random() * 0.05)


async def _load(url: str, clients: int, seconds: float, huge: int) -> tuple[dict, list[str]]:
    stats = collections.defaultdict(int, latency=[])
    kinds = ["normal"] * (clients // 2) + ["huge"] * (clients // 8) + ["abandoned"] * (clients // 8)
    kinds += ["slowloris"] * (clients - len(kinds))
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(url, kind, random.Random(k), until, stats, huge)
                           for k, kind in enumerate(kinds)))
    return dict(stats), kinds


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="the server's --request-timeout-s")
    parser.add_argument("--huge", type=int, default=200, help="sentences in a huge request")
    args = parser.parse_args()
    port = _free_port()
    server = _start(args.run_dir, port, args.timeout, max(args.huge, 1000))
    url = f"http://127.0.0.1:{port}"
    try:
        stats, kinds = asyncio.run(_load(url, args.clients, args.seconds, args.huge))

        async def health():
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
                return await response.json()
        after = asyncio.run(health())
        rss = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    latency = sorted(stats.pop("latency"))
    result = {
        "clients": {kind: kinds.count(kind) for kind in sorted(set(kinds))}, "seconds": args.seconds,
        "request_timeout_s": args.timeout, "counts": stats, "health": after,
        "normal_latency_s": {"median": round(statistics.median(latency), 3) if latency else None,
                             "p99": round(latency[int(0.99 * (len(latency) - 1))], 3) if latency else None,
                             "max": round(latency[-1], 3) if latency else None},
        "server_peak_rss_mb": round(rss, 1), "machine": describe("cpu")}
    result["ok"] = (bool(latency) and stats.get("normal_failed", 0) == 0 and latency[-1] <= args.timeout
                    and after.get("status") == "ok")
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
