"""Shared fixtures: a synthetic reversal corpus and a small model trained on it once per session;
a server in a thread for the tests that send it requests."""
import asyncio
import json
import os
import random
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import settings


from torch.utils._python_dispatch import TorchDispatchMode

from nmt.config import config_from_dict

# The sine application is a script (scripts/forecast_sine.py); its tests import it by name.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

# CI explores the same examples every run (a red CI is then reproducible); locally each run
# draws new ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

LETTERS = "abcdefghijklmnopqrst"
# The shared run's sentences: 2 to 5 words are learnt exactly in 200 steps of 700 tokens (16 s
# on 2 cores); 3 to 8 words took 300 steps of 1,200 (32 s). Tests decode longer ones too.
REVERSAL_WORDS = (2, 5)


def reversal_pairs(n: int, seed: int, words: tuple[int, int] = (3, 8)) -> tuple[list[str], list[str]]:
    """Random sequences of single-letter words (``words``: the least and most) and their reversals."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(LETTERS) for _ in range(rng.randint(*words))) for _ in range(n)]
    return src, [" ".join(reversed(s.split())) for s in src]


def write_split(folder: Path, name: str, src: list[str], tgt: list[str]) -> str:
    (folder / f"{name}.src").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{name}.tgt").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")
    return str(folder / name)


@pytest.fixture(scope="session")
def reversal_data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("reversal")
    splits = {}
    for name, n, seed in (("train", 3000, 1), ("valid", 100, 2), ("test", 200, 3)):
        splits[name] = write_split(folder, name, *reversal_pairs(n, seed, REVERSAL_WORDS))
    return splits


# A model small enough to train, kill and resume many times in seconds: for the tests of
# exactness, not of quality.
SMALL_MODEL = {"model__embedding_size": 32, "model__encoder_hidden_size": 32,
               "model__decoder_hidden_size": 64}


def reversal_config(data: dict, **overrides) -> dict:
    """A small, fast model for the reversal task (trains in well under a minute on 2 cores)."""
    cfg = {
        "data": {"train": data["train"], "valid": data["valid"], "test": data["test"],
                 "src_lang": "src", "tgt_lang": "tgt", "vocab_size": 300},
        "model": {"embedding_size": 128, "encoder_layers": 1, "encoder_hidden_size": 128,
                  "decoder_layers": 1, "decoder_hidden_size": 256, "dropout": 0.1,
                  "tie_output": False, "share_embeddings": False},
        "train": {"batch_size": 1200, "max_steps": 500, "valid_every": 250, "log_every": 50,
                  "lr": 0.003, "warmup_steps": 0, "label_smoothing": 0.0, "patience": 0, "threads": 2, "device": "cpu",
                  "precision": "fp32"},
        "decode": {"beam_size": 3, "batch_size": 64},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


@pytest.fixture(scope="session")
def reversal_run(reversal_data, tmp_path_factory) -> Path:
    from nmt.train import train
    run_dir = tmp_path_factory.mktemp("runs") / "reversal"
    # Without input feeding, as the demo trains: in 200 steps 100% of the test set is reversed
    # exactly (input feeding is trained elsewhere).
    train(config_from_dict(reversal_config(reversal_data, train__max_steps=200, train__batch_size=700,
                                           train__valid_every=100, model__input_feeding=False)),
          run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


class HostTransfers(TorchDispatchMode):
    """Counts what copies device data to the host (on a GPU: waits for it): the tensor
    methods that hand back host data, and the ops that read a value (item, bool, int) or
    whose output size depends on the data (nonzero, masking)."""
    SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                   "unique_consecutive", "repeat_interleave", "bincount"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.count = 0
        for name in ("tolist", "cpu", "numpy"):  # these reach no op when the tensor is on the CPU
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, original):
        def method(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)
        return method

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCING_OPS or (name.startswith("index") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1:2] for i in
                (i if isinstance(i, (list, tuple)) else [i]))):
            self.count += 1
        return func(*args, **(kwargs or {}))


class Running:
    """A server in its own thread and event loop, as ``nmt-serve`` runs it."""

    def __init__(self, translator, limits):
        from nmt.serve import Server
        self.server = Server(translator, limits)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        assert ready.wait(60)

    def _serve(self, ready):
        from aiohttp import web
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.server.app())
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        ready.set()
        self.loop.run_forever()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _post_all(url: str, bodies: list) -> list[tuple[int, dict]]:
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async def post(body):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with session.post(f"{url}/translate", data=data) as response:
                return response.status, await response.json()
        return await asyncio.gather(*(post(body) for body in bodies))


def post_all(url: str, bodies: list) -> list[tuple[int, dict]]:
    """Send every body at once, from as many concurrent clients."""
    return asyncio.run(_post_all(url, bodies))


def get(url: str) -> dict:
    async def fetch():
        import aiohttp
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.json()
    return asyncio.run(fetch())


def kill_9_at_a_random_step(command: list[str], last: Path, steps: int) -> int:
    """Run ``command`` (an nmt-train writing checkpoints by time to ``last``), kill -9 it once its
    checkpoint has reached a random step before ``steps``; the step ``last`` then holds."""
    import random
    import signal
    import subprocess
    import time

    from nmt.checkpoint import load_checkpoint

    def reached(step: int) -> bool:
        try:
            return load_checkpoint(last)["train_state"]["step"] >= step
        except Exception:  # not written yet
            return False

    kill_at = random.Random().randint(2, steps - 2)  # the kill lands wherever the run is then
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not reached(kill_at):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    killed_at = load_checkpoint(last)["train_state"]["step"]
    assert 1 <= killed_at < steps
    return killed_at


def same_last_checkpoints(a: Path, b: Path) -> dict:
    """Assert that two runs' last checkpoints hold the same weights and RNG state, bit for bit;
    the first one's train_state."""
    from nmt.checkpoint import load_checkpoint

    first, second = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (a, b))
    assert first["train_state"]["step"] == second["train_state"]["step"]
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(first["rng"]["cpu"], second["rng"]["cpu"]))
    return first["train_state"]
