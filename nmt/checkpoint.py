"""Run directories and checkpoints: every path of a run, the checkpoint's fields, the
metrics file; written atomically, checked when loaded.

A run directory holds ``config.yaml`` (the resolved config), the sentencepiece
model(s) (named by ``nmt.vocab.vocab_paths``), ``checkpoints/{last,best}.pt`` (and
``step-N.pt``, ``averaged.pt``), ``train.log``, ``metrics.jsonl``, ``tensorboard/``,
``cache/`` and ``reports/``. A checkpoint is a dict of tensors and plain values on
disk (read with ``weights_only``: nothing in it runs), a ``Checkpoint`` here.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from nmt.config import Config, config_from_dict
from nmt.device import pick_device
from nmt.errors import CheckpointError, ConfigError
from nmt.io import write_file, write_text
from nmt.model import Seq2Seq
from nmt.schedule import ScheduleState
from nmt.vocab import Vocab, vocab_paths

if TYPE_CHECKING:
    from nmt.corpus import Corpus

log = logging.getLogger("nmt")
STEP_FILE = re.compile(r"step-(\d+)\.pt")


class RunDir:
    """The paths of a run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"  # the resolved config
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoint("last")  # written at validations, by time and at the end
        self.best = self.checkpoint("best")  # the best validation BLEU's
        self.averaged = self.checkpoint("averaged")  # nmt-average's
        self.train_log = self.root / "train.log"
        self.metrics = MetricsFile(self.root / "metrics.jsonl")
        self.tensorboard = self.root / "tensorboard"
        self.cache = self.root / "cache"  # the prepared data, unless data.cache_dir
        self.reports = self.root / "reports"  # nmt-evaluate's

    def checkpoint(self, name: str) -> Path:
        """``name``: "best", "last", "averaged" or "step-N"."""
        return self.checkpoints / f"{name}.pt"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoint(f"step-{step}")

    def step_checkpoints(self) -> list[Path]:
        """The run's kept validation checkpoints (train.keep_checkpoints), oldest first."""
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob("step-*.pt")
                 if (m := STEP_FILE.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def drop_step_checkpoints_before_the_last(self, keep: int) -> None:
        for old in self.step_checkpoints()[:-keep]:
            old.unlink()

    @classmethod
    def of_checkpoint(cls, path: Path) -> RunDir | None:
        """The run directory a checkpoint file lies in, or None (a file elsewhere)."""
        return cls(path.parent.parent) if path.parent.name == "checkpoints" else None


# ----------------------------------------------------------------------------- metrics

class Metric:
    """The curves' names: the keys of metrics.jsonl, and TensorBoard's tags with the first
    _ written as / (train/loss)."""
    TRAIN_LOSS = "train_loss"
    TRAIN_LR = "train_lr"
    TRAIN_SPEED = "train_target_tokens_per_s"
    VALID_LOSS = "valid_loss"
    VALID_PPL = "valid_ppl"
    VALID_BLEU = "valid_bleu"

    @staticmethod
    def tag(name: str) -> str:
        return name.replace("_", "/", 1)


@dataclass(frozen=True)
class MetricsFile:
    """metrics.jsonl: one JSON object per log line or validation, its step and its values."""
    path: Path
    STEP: ClassVar[str] = "step"

    def append(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({self.STEP: step, **values}) + "\n")

    def _rows(self) -> list[tuple[str, dict | None]]:
        """(line, its object, or None for a line cut short by a kill)."""
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                row = json.loads(line)
                int(row[self.STEP])
            except (ValueError, KeyError, TypeError):
                row = None
            rows.append((line, row))
        return rows

    def forget_after(self, step: int) -> None:
        """Keep the points up to ``step`` (a resumed run's checkpoint): those after it are
        trained (and logged) again, and each step must appear once."""
        if not self.path.exists():
            return
        rows = self._rows()
        kept = [line for line, row in rows if row is not None and int(row[self.STEP]) <= step]
        if len(kept) != len(rows):
            write_text(self.path, "".join(kept))

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Each metric's (step, value) points in step order; a resumed run's point overwrites."""
        if not self.path.is_file():
            return {}
        curves: dict[str, dict[int, float]] = {}
        for _, row in self._rows():
            for name, value in (row or {}).items():
                if name != self.STEP:
                    curves.setdefault(name, {})[row[self.STEP]] = value
        return {name: sorted(points.items()) for name, points in curves.items()}


# ----------------------------------------------------------------------------- checkpoints

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

    def to_payload(self) -> dict:
        """The dict torch.save writes: the fields, train_state flat and rng nested as ever;
        the fields that are None are left out."""
        payload = {"model": self.model, "config": self.config, "vocab": self.vocab,
                   "train_state": {**asdict(self.progress), **asdict(self.schedule)}}
        if self.rng_cpu is not None:
            payload["rng"] = {"cpu": self.rng_cpu, "cuda": self.rng_cuda}
        for name in ("optimizer", "bf16", "valid_bleu", "corpus", "ema", "averaged_from"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        return payload

    @classmethod
    def from_payload(cls, payload: dict, path: Path | str = "checkpoint") -> Checkpoint:
        if not isinstance(payload, dict) or not set(cls.REQUIRED) <= payload.keys():
            raise CheckpointError(f"{path}: not an nmt checkpoint")
        rng = payload.get("rng", {})
        return cls(model=payload["model"], config=payload["config"], vocab=payload["vocab"],
                   progress=TrainState.from_record(payload["train_state"]),
                   schedule=ScheduleState.from_record(payload["train_state"]),
                   optimizer=payload.get("optimizer"), rng_cpu=rng.get("cpu"), rng_cuda=rng.get("cuda"),
                   bf16=payload.get("bf16"), valid_bleu=payload.get("valid_bleu"),
                   corpus=payload.get("corpus"), ema=payload.get("ema"),
                   averaged_from=payload.get("averaged_from"))

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
    """A checkpoint's payload, checked. mmap: map the tensors' bytes instead of reading them
    (for a look at a few fields)."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__})") from None
    Checkpoint.from_payload(payload, path)  # refuses what is not one
    return payload


def decoding_weights(payload: dict) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's payload decodes with (see ``Checkpoint.decoding_weights``)."""
    return Checkpoint.from_payload(payload).decoding_weights()


def resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """A name in the run's checkpoints folder ("best", "last", "averaged", "step-500") or a
    path (with a "/" or ending in .pt) -> an existing checkpoint file."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    is_path = "/" in checkpoint or checkpoint.endswith(".pt")
    path = Path(checkpoint) if is_path else RunDir(run_dir).checkpoint(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def check_vocab(records: dict[str, dict], side: str, vocab: Vocab, path: Path) -> None:
    """Refuse a checkpoint (or model folder) whose ``side`` vocabulary record does not match
    the sentencepiece model beside it."""
    want = records[side]
    if want["size"] != len(vocab) or want["sha256"] != vocab.fingerprint:
        raise CheckpointError(
            f"{path}: {side} vocabulary ({want['size']} pieces, sha256 {want['sha256'][:12]}) "
            f"does not match {vocab.path} ({len(vocab)} pieces, sha256 {vocab.fingerprint[:12]})")


# ----------------------------------------------------------------------------- resuming

def load_for_resume(path: Path, cfg: Config, device: torch.device) -> Checkpoint:
    """The checkpoint at ``path``, refused when a setting of ``cfg`` that shapes the model,
    the vocabulary or the epoch's batch list changed (checked before the data is read)."""
    ckpt = Checkpoint.load(path, device)
    if ckpt.optimizer is None or ckpt.rng_cpu is None:
        raise CheckpointError(f"{path}: holds no optimizer or RNG state (a checkpoint for decoding, "
                              "or one from an older nmt): training cannot resume from it")
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
    """Refuse other vocabularies than the run's; warn when the prepared data or the precision
    changed, as the run will then not match an uninterrupted one."""
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
                  schedule: ScheduleState, rng_states: list[tuple], bf16: bool, valid_bleu: float | None
                  ) -> None:
    """Write a checkpoint that training resumes from exactly to each of ``paths``;
    ``rng_states``: each rank's (CPU, CUDA) RNG state."""
    ckpt = Checkpoint(
        model=model.state_dict(), config=cfg.to_dict(),
        vocab=vocab_records(corpus.src_vocab, corpus.tgt_vocab), progress=progress, schedule=schedule,
        optimizer=optimizer.state_dict(),
        rng_cpu=[cpu for cpu, _ in rng_states], rng_cuda=[cuda for _, cuda in rng_states], bf16=bf16,
        valid_bleu=valid_bleu, corpus=corpus.fingerprint, ema=None if ema is None else ema.state_dict())
    for path in paths:
        ckpt.save(path)


def restore_training(ckpt: Checkpoint, *, path: Path, corpus: Corpus, bf16: bool, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, ema: torch.nn.Module | None, rank: int,
                     device: torch.device) -> None:
    """Check the data (``check_resumed_data``), then load the weights, the optimizer, the
    moving average and this rank's RNG state."""
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


# ----------------------------------------------------------------------------- loading for decoding

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
    ckpt = Checkpoint.load(path, device)
    try:
        cfg = config_from_dict(ckpt.config, where=f"{path}: ")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    src_path, tgt_path = vocab_paths(run_dir, cfg.data.joint_vocab)
    src_vocab = Vocab(src_path)
    tgt_vocab = Vocab(tgt_path)
    check_vocab(ckpt.vocab, "src", src_vocab, path)
    check_vocab(ckpt.vocab, "tgt", tgt_vocab, path)
    model = Seq2Seq(cfg.model, len(src_vocab), len(tgt_vocab)).to(device)
    model.load_state_dict(ckpt.decoding_weights())
    model.eval()
    return LoadedRun(cfg, model, src_vocab, tgt_vocab, path, ckpt.progress.step)
