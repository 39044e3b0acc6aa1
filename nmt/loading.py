"""Loading a trained model for decoding: a run directory's checkpoint or a model folder."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.checkpoint import Checkpoint, check_vocab
from nmt.config import Config, config_from_dict
from nmt.device import pick_device
from nmt.errors import CheckpointError, ConfigError
from nmt.model import Seq2Seq
from nmt.rundir import resolve_checkpoint
from nmt.vocab import Vocab, vocab_paths

# A model folder's format (written by ``nmt.export``).
FORMAT = "nmt-model-folder"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


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
    """A trained model for decoding, its vocabularies checked: a run directory's checkpoint, or
    a model folder (``nmt.export``: one model, so ``checkpoint`` must stay "best")."""
    run_dir = Path(run_dir)
    if is_model_folder(run_dir):
        if checkpoint != "best":
            raise CheckpointError(f"{run_dir}: a model folder holds one model; "
                                  f"--checkpoint {checkpoint} applies to run directories only")
        return load_folder(run_dir, device)
    path = resolve_checkpoint(run_dir, checkpoint)
    device = pick_device(str(device))
    ckpt = Checkpoint.load(path, device)
    try:
        cfg = config_from_dict(ckpt.config, where=f"{path}: ")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    src_vocab, tgt_vocab = (Vocab(p) for p in vocab_paths(run_dir, cfg.data.joint_vocab))
    for side, vocab in (("src", src_vocab), ("tgt", tgt_vocab)):
        check_vocab(ckpt.vocab, side, vocab, path)
    model = Seq2Seq(cfg.model, len(src_vocab), len(tgt_vocab)).to(device)
    model.load_state_dict(ckpt.decoding_weights())
    return LoadedRun(cfg, model.eval(), src_vocab, tgt_vocab, path, ckpt.progress.step)


def is_model_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def load_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """A model folder -> the model in eval mode with its vocabularies, checked."""
    from safetensors.torch import load_model

    folder = Path(folder)
    device = pick_device(str(device))
    path = folder / CONFIG
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable as JSON ({type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or \
            record.get("version") != VERSION:
        raise CheckpointError(f"{path}: not an nmt model folder's config (format {FORMAT}, "
                              f"version {VERSION})")
    try:
        cfg = config_from_dict(record["config"], where=f"{path}: ")
        step = int(record["step"])
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: missing or malformed field {err}") from None
    src_vocab, tgt_vocab = (Vocab(p) for p in vocab_paths(folder, cfg.data.joint_vocab))
    for side, vocab in (("src", src_vocab), ("tgt", tgt_vocab)):
        check_vocab(record["vocab"], side, vocab, path)
    model = Seq2Seq(cfg.model, len(src_vocab), len(tgt_vocab))
    try:
        load_model(model, folder / WEIGHTS, strict=True)
    except Exception as err:  # safetensors' own errors; RuntimeError for wrong keys or shapes
        reason = str(err).splitlines()[0][:200]
        raise CheckpointError(f"{folder / WEIGHTS}: not this model's weights ({reason})") from None
    return LoadedRun(cfg, model.to(device).eval(), src_vocab, tgt_vocab, folder / WEIGHTS, step)
