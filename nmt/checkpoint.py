"""Checkpoints: their fields, atomic saving and the checks of a resume. On disk a dict of tensors
and plain values, read with ``weights_only`` (nothing in it runs)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from nmt.config import Config
from nmt.errors import CheckpointError
from nmt.io import write_file
from nmt.schedule import ScheduleState
from nmt.vocab import Vocab

log = logging.getLogger("nmt")


class Corpus(Protocol):
    """What a checkpoint records of the prepared training data (``nmt.corpus.Corpus`` has it)."""
    src_vocab: Vocab
    tgt_vocab: Vocab
    fingerprint: str
    folder: Path


@dataclass
class TrainState:
    """Where a run stands; saved as the checkpoint's train_state, beside the schedule's state."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    train_seconds: float = 0.0
    target_tokens: int = 0  # trained on so far (end markers included), all ranks together
    sentences: int = 0

    @classmethod
    def from_record(cls, record: dict) -> TrainState:
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def vocab_records(src_vocab: Vocab, tgt_vocab: Vocab) -> dict[str, dict]:
    """What a checkpoint (or model folder) records of its vocabularies, to check them by."""
    return {side: {"file": vocab.path.name, "size": len(vocab), "sha256": vocab.fingerprint}
            for side, vocab in (("src", src_vocab), ("tgt", tgt_vocab))}


@dataclass
class Checkpoint:
    """A checkpoint's fields. On disk (``to_payload``) the same dict as ever: old files load."""
    model: dict[str, torch.Tensor]  # the trained weights
    config: dict  # Config.to_dict()
    vocab: dict[str, dict]  # vocab_records
    progress: TrainState
    schedule: ScheduleState
    optimizer: dict | None = None  # None: a checkpoint for decoding only (nmt-average)
    rng_cpu: list[torch.Tensor] | None = None  # each rank's RNG state, for an exact resume
    rng_cuda: list[torch.Tensor | None] | None = None
    bf16: bool | None = None  # trained under bf16 autocast
    valid_bleu: float | None = None  # the validation BLEU it was saved at
    corpus: str | None = None  # the prepared training data's fingerprint
    ema: dict[str, torch.Tensor] | None = None  # the moving average of the weights (train.ema)
    averaged_from: list[str] | None = None
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "config", "vocab", "train_state")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("optimizer", "bf16", "valid_bleu", "corpus", "ema",
                                           "averaged_from")

    def to_payload(self) -> dict:
        """The dict torch.save writes: train_state flat, rng nested, None fields left out."""
        payload = {"model": self.model, "config": self.config, "vocab": self.vocab,
                   "train_state": {**asdict(self.progress), **asdict(self.schedule)}}
        if self.rng_cpu is not None:
            payload["rng"] = {"cpu": self.rng_cpu, "cuda": self.rng_cuda}
        return payload | {name: getattr(self, name) for name in self.OPTIONAL
                          if getattr(self, name) is not None}

    @classmethod
    def from_payload(cls, payload: dict, path: Path | str = "checkpoint") -> Checkpoint:
        if not isinstance(payload, dict) or not set(cls.REQUIRED) <= payload.keys():
            raise CheckpointError(f"{path}: not an nmt checkpoint")
        rng = payload.get("rng", {})
        return cls(model=payload["model"], config=payload["config"], vocab=payload["vocab"],
                   progress=TrainState.from_record(payload["train_state"]),
                   schedule=ScheduleState.from_record(payload["train_state"]),
                   rng_cpu=rng.get("cpu"), rng_cuda=rng.get("cuda"),
                   **{name: payload.get(name) for name in cls.OPTIONAL})

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu", mmap: bool = False) -> Checkpoint:
        return cls.from_payload(load_checkpoint(path, device, mmap), path)

    def save(self, path: Path) -> None:
        """Written atomically: a kill leaves the previous file."""
        write_file(path, lambda f: torch.save(self.to_payload(), f))

    def decoding_weights(self) -> dict[str, torch.Tensor]:
        """The moving average when there is one (train.ema), else the trained weights."""
        return self.model if self.ema is None else self.ema

    def same_model(self, other: Checkpoint) -> bool:
        """Whether ``other`` has this one's model settings and vocabularies."""
        return self.config["model"] == other.config["model"] and self.vocab == other.vocab


def load_checkpoint(path: Path, device: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """A checkpoint's payload, checked; mmap: map the tensors' bytes (to look at a few fields)."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__})") from None
    Checkpoint.from_payload(payload, path)  # refuses what is not one
    return payload


def decoding_weights(payload: dict) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's payload decodes with (see ``Checkpoint.decoding_weights``)."""
    return Checkpoint.from_payload(payload).decoding_weights()


def check_vocab(records: dict[str, dict], side: str, vocab: Vocab, path: Path) -> None:
    """Refuse a checkpoint (or model folder) whose ``side`` vocabulary record is not ``vocab``'s."""
    want = records[side]
    if want["size"] != len(vocab) or want["sha256"] != vocab.fingerprint:
        raise CheckpointError(
            f"{path}: {side} vocabulary ({want['size']} pieces, sha256 {want['sha256'][:12]}) "
            f"does not match {vocab.path} ({len(vocab)} pieces, sha256 {vocab.fingerprint[:12]})")


def load_for_resume(path: Path, cfg: Config, device: torch.device) -> Checkpoint:
    """The checkpoint at ``path``, refused when a setting of ``cfg`` that shapes the model,
    the vocabulary or the epoch's batch list changed (checked before the data is read)."""
    ckpt = Checkpoint.load(path, device)
    if ckpt.optimizer is None or ckpt.rng_cpu is None:
        raise CheckpointError(f"{path}: holds no optimizer or RNG state (a checkpoint for "
                              "decoding, or one from an older nmt): training cannot resume from it")
    # (The vocabulary is the run's own on a resume: the sample it was trained on no longer matters.)
    loose = ("valid", "test", "cache_dir", "spm_sample_sentences")
    fixed = [("data", k) for k in ckpt.config["data"] if k not in loose] + \
            [("model", k) for k in ckpt.config["model"]] + \
            [("train", k) for k in ("seed", "batch_size", "batch_unit")]
    for section, key in fixed:
        value = ckpt.config[section][key]
        now = getattr(getattr(cfg, section), key)
        if key in ("train", "loader") and isinstance(value, str) and os.path.abspath(value) == now:
            continue  # a run from before paths were recorded as absolute
        if now != value:
            raise CheckpointError(f"{path}: {section}.{key} was {value!r} in this run; "
                                  "it cannot change on --resume")
    return ckpt


def check_resumed_data(ckpt: Checkpoint, corpus: Corpus, bf16: bool, path: Path) -> None:
    """Refuse other vocabularies than the run's; warn when the data or the precision changed."""
    check_vocab(ckpt.vocab, "src", corpus.src_vocab, path)
    check_vocab(ckpt.vocab, "tgt", corpus.tgt_vocab, path)
    if ckpt.corpus not in (None, corpus.fingerprint):
        log.warning(f"the training data changed since {path} was written (now "
                    f"{corpus.folder}): the run will not match an uninterrupted one")
    if ckpt.bf16 not in (None, bf16):  # e.g. precision auto on a CPU without bf16
        log.warning(f"the run trained {'in bf16' if ckpt.bf16 else 'in fp32'} and goes on "
                    f"{'in bf16' if bf16 else 'in fp32'}: it will not match an uninterrupted run")


def save_training(paths: list[Path], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  ema: torch.nn.Module | None, cfg: Config, corpus: Corpus, progress: TrainState,
                  schedule: ScheduleState, rng_states: list[tuple], bf16: bool,
                  valid_bleu: float | None) -> None:
    """Write an exactly resumable checkpoint to each of ``paths``."""
    ckpt = Checkpoint(
        model=model.state_dict(), config=cfg.to_dict(),
        vocab=vocab_records(corpus.src_vocab, corpus.tgt_vocab), progress=progress,
        schedule=schedule, optimizer=optimizer.state_dict(),
        rng_cpu=[cpu for cpu, _ in rng_states], rng_cuda=[cuda for _, cuda in rng_states],
        bf16=bf16, valid_bleu=valid_bleu, corpus=corpus.fingerprint,
        ema=None if ema is None else ema.state_dict())
    for path in paths:
        ckpt.save(path)


def restore_training(ckpt: Checkpoint, *, path: Path, corpus: Corpus, bf16: bool,
                     model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     ema: torch.nn.Module | None, rank: int, device: torch.device) -> None:
    """``check_resumed_data``, then load weights, optimizer, moving average and RNG state."""
    check_resumed_data(ckpt, corpus, bf16, path)
    model.load_state_dict(ckpt.model)
    optimizer.load_state_dict(ckpt.optimizer)
    if ema is not None and ckpt.ema is None:
        log.warning("train.ema is new on this resume: the average starts from the current weights")
    if ema is not None:
        ema.load_state_dict(ckpt.model if ckpt.ema is None else ckpt.ema)
    if rank < len(ckpt.rng_cpu):  # the same world size: each rank continues its own stream
        torch.set_rng_state(ckpt.rng_cpu[rank])
        if device.type == "cuda" and ckpt.rng_cuda[rank] is not None:
            torch.cuda.set_rng_state(ckpt.rng_cuda[rank], device)
    log.info(f"resumed from {path} at step {ckpt.progress.step} (epoch {ckpt.progress.epoch}, "
             f"batch {ckpt.progress.batch_in_epoch})")
