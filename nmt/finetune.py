"""Fine-tuning: a new run that starts from a trained model (``train.init_from``).

The source (a run directory's best checkpoint, a checkpoint, or a model folder) gives its weights
and sentencepiece model(s); every ``model.*`` option that shapes weights, and ``data.joint_vocab``,
must match. Optimizer, schedule and step start fresh. ``train.init_sha256`` records (or, given
beforehand, pins) the source's weights. A fine-tuning run resumes like any other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.loading import LoadedRun, load_run
from nmt.config import Config, ModelConfig
from nmt.errors import ConfigError
from nmt.io import write_bytes
from nmt.vocab import vocab_paths

log = logging.getLogger("nmt")

FREE = ("dropout",)  # model options that shape no weight: they may differ from the source's


@dataclass
class Source:
    """What a fine-tuning run starts from."""
    run: LoadedRun  # the source model (decoding weights: the moving average where one was kept)
    sha256: str  # of its weights file (checkpoint or model.safetensors)


def load_source(cfg: Config) -> Source:
    """``train.init_from`` loaded and checked against ``cfg`` (ConfigError); writes nothing."""
    where = Path(cfg.train.init_from).expanduser()
    # A checkpoint lies in <run>/checkpoints/<name>.pt
    run = load_run(where.parent.parent, str(where)) if where.is_file() else load_run(where)
    sha256 = hashlib.sha256(run.checkpoint.read_bytes()).hexdigest()
    if cfg.train.init_sha256 and cfg.train.init_sha256 != sha256:
        raise ConfigError(f"train.init_sha256: {run.checkpoint} has sha256 {sha256}, not the "
                          f"{cfg.train.init_sha256} this run was started from")
    for spec in dataclasses.fields(ModelConfig):
        mine, theirs = getattr(cfg.model, spec.name), getattr(run.cfg.model, spec.name)
        if spec.name not in FREE and mine != theirs:
            raise ConfigError(f"model.{spec.name}: {mine!r} in this config, {theirs!r} in "
                              f"{run.checkpoint}; a fine-tuned model keeps the model of "
                              f"train.init_from (only "
                              f"{', '.join('model.' + name for name in FREE)} may differ)")
    if cfg.data.joint_vocab != run.cfg.data.joint_vocab:
        raise ConfigError(f"data.joint_vocab: {cfg.data.joint_vocab} in this config, "
                          f"{run.cfg.data.joint_vocab} in {run.checkpoint}; "
                          "fine-tuning keeps its vocabulary")
    return Source(run, sha256)


def take_vocabulary(source: Source, run_dir: Path, joint: bool) -> None:
    """The source's sentencepiece model(s) as the run's own."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for theirs, mine in zip((source.run.src_vocab, source.run.tgt_vocab),
                            vocab_paths(run_dir, joint)):
        write_bytes(mine, theirs.model_bytes)


def take_weights(source: Source, model: torch.nn.Module, ema: torch.nn.Module | None) -> None:
    """The source's weights in the new model (and its moving average, which starts from them)."""
    state = source.run.model.state_dict()
    for target in (model, ema):
        if target is not None:
            target.load_state_dict(state)
    log.info(f"fine-tuning from {source.run.checkpoint} (sha256 {source.sha256[:12]}...): its "
             f"weights and vocabulary; the optimizer, learning-rate schedule and step start fresh")
