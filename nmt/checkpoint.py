"""Run directories and checkpoints: written atomically, checked when loaded.

A run directory holds ``config.yaml`` (the resolved config), the
sentencepiece model(s), ``checkpoints/{last,best}.pt``, ``train.log``,
``tensorboard/`` and ``reports/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.config import Config, config_from_dict
from nmt.device import pick_device
from nmt.errors import CheckpointError, ConfigError
from nmt.io import write_file
from nmt.model import Seq2Seq
from nmt.vocab import Vocab, vocab_paths


def vocab_record(vocab: Vocab) -> dict:
    return {"file": vocab.path.name, "size": len(vocab), "sha256": vocab.fingerprint}


def save_checkpoint(path: Path, payload: dict) -> None:
    write_file(path, lambda f: torch.save(payload, f))


def resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """A name in the run's checkpoints folder ("best", "last", "averaged", "step-500") or a
    path (with a "/" or ending in .pt) -> an existing checkpoint file."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    is_path = "/" in checkpoint or checkpoint.endswith(".pt")
    path = Path(checkpoint) if is_path else run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """mmap: map the tensors' bytes instead of reading them (for a look at a few fields)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "vocab", "train_state"} <= ckpt.keys():
        raise CheckpointError(f"{path}: not an nmt checkpoint")
    return ckpt


def decoding_weights(ckpt: dict) -> dict:
    """The weights a checkpoint decodes with: the moving average when it has one
    (train.ema), else the trained weights."""
    return ckpt.get("ema", ckpt["model"])


def check_vocab(ckpt: dict, side: str, vocab: Vocab, path: Path) -> None:
    """Refuse a checkpoint whose vocabulary does not match the sentencepiece model beside it."""
    want = ckpt["vocab"][side]
    if want["size"] != len(vocab) or want["sha256"] != vocab.fingerprint:
        raise CheckpointError(
            f"{path}: {side} vocabulary ({want['size']} pieces, sha256 {want['sha256'][:12]}) "
            f"does not match {vocab.path} ({len(vocab)} pieces, sha256 {vocab.fingerprint[:12]})")


@dataclass
class LoadedRun:
    cfg: Config
    model: Seq2Seq  # in eval mode
    src_vocab: Vocab
    tgt_vocab: Vocab
    checkpoint: Path
    step: int


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
             ) -> LoadedRun:
    """Load a trained model for decoding, checking its vocabularies: a run directory's
    checkpoint, or a model folder (``nmt.export``: it has one model, so ``checkpoint``
    must stay "best")."""
    from nmt.export import is_model_folder, load_folder
    run_dir = Path(run_dir)
    if is_model_folder(run_dir):
        if checkpoint != "best":
            raise CheckpointError(f"{run_dir}: a model folder holds one model; "
                                  f"--checkpoint {checkpoint} applies to run directories only")
        return load_folder(run_dir, device)
    path = resolve_checkpoint(run_dir, checkpoint)
    device = pick_device(str(device))
    ckpt = load_checkpoint(path, device)
    try:
        cfg = config_from_dict(ckpt["config"], where=f"{path}: ")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    src_path, tgt_path = vocab_paths(run_dir, cfg.data.joint_vocab)
    src_vocab, tgt_vocab = Vocab(src_path), Vocab(tgt_path)
    check_vocab(ckpt, "src", src_vocab, path)
    check_vocab(ckpt, "tgt", tgt_vocab, path)
    model = Seq2Seq(cfg.model, len(src_vocab), len(tgt_vocab)).to(device)
    model.load_state_dict(decoding_weights(ckpt))
    model.eval()
    return LoadedRun(cfg, model, src_vocab, tgt_vocab, path, ckpt["train_state"]["step"])
