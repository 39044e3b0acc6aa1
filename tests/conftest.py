"""Shared fixtures: a synthetic reversal corpus and a small model trained on it once per session."""
import os
import random
from pathlib import Path

import pytest
import torch
from hypothesis import settings


from torch.utils._python_dispatch import TorchDispatchMode

from nmt.config import config_from_dict

# CI explores the same examples every run (a red CI is then reproducible); locally each run
# draws new ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

LETTERS = "abcdefghijklmnopqrst"


def reversal_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Random sequences of single-letter words and their reversals."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8))) for _ in range(n)]
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
        splits[name] = write_split(folder, name, *reversal_pairs(n, seed))
    return splits


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
    train(config_from_dict(reversal_config(reversal_data)), run_dir)
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
