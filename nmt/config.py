"""Typed configuration: YAML files, dotted command-line overrides, validation.

Every key is a dataclass field below; its comment is its documentation (the
configs in ``configs/`` repeat it). Unknown keys and values of the wrong type
are rejected with a message that names the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmt.errors import ConfigError


@dataclass
class DataConfig:
    # Where the corpus comes from: "text" (line-aligned files <prefix>.<lang>),
    # "json", "csv" or "parquet" (local files read with Hugging Face datasets),
    # or a Hugging Face hub dataset name (or a local dataset folder).
    loader: str = "text"
    # Each split: a file prefix for "text"; a data file for json/csv/parquet;
    # a split name (train, validation, test) for a hub dataset. "" = none.
    train: str = "data/multi30k/train"
    valid: str = "data/multi30k/val"
    test: str = "data/multi30k/test2016"
    src_lang: str = "de"
    tgt_lang: str = "en"
    # Record fields holding the two sides for datasets loaders; dots reach into
    # nested records ("translation.de"). "" means the language code.
    src_field: str = ""
    tgt_field: str = ""
    hub_config: str = ""  # configuration name of a hub dataset, if it has several
    # sentencepiece: "bpe" or "unigram"; one joint model or one per side.
    subword_type: str = "bpe"
    vocab_size: int = 8000
    joint_vocab: bool = True
    # Training pairs longer than max_len pieces on either side, or whose
    # length ratio exceeds max_len_ratio, are dropped (and counted).
    max_len: int = 100
    max_len_ratio: float = 3.0


# The defaults are the CPU settings that won the project's time-to-quality
# test (Multi30k en->de, 2 cores, 20 minutes: test2016 BLEU 36.66); see docs/BENCHMARKS.md.


@dataclass
class ModelConfig:
    cell: str = "lstm"  # lstm, gru or rnn (plain tanh), encoder and decoder
    embedding_size: int = 256
    encoder_layers: int = 2
    encoder_hidden_size: int = 256  # per direction
    bidirectional: bool = True
    decoder_layers: int = 1
    decoder_hidden_size: int = 256
    attention: str = "general"  # dot, general (Luong) or mlp (Bahdanau)
    input_feeding: bool = True  # feed the last attentional vector back in
    dropout: float = 0.3  # on embeddings, between layers, on the attentional vector
    tie_output: bool = True  # output layer shares the target embeddings
    share_embeddings: bool = True  # source and target share one table (needs joint_vocab)


@dataclass
class TrainConfig:
    seed: int = 1
    batch_size: int = 2048  # per batch, counted in batch_unit (a step: processes x accumulate batches)
    batch_unit: str = "tokens"  # tokens (padded source or target, the larger) or sentences
    accumulate: int = 1  # batches per step per process (gradient accumulation)
    max_steps: int = 20000
    max_epochs: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # stop after this many minutes of this process's training loop; 0 = no limit
    lr: float = 2e-3  # Adam
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    lr_decay: float = 0.5  # multiply lr by this when validation BLEU stalls ...
    lr_patience: int = 2  # ... for this many validations
    min_lr: float = 1e-5
    clip_grad_norm: float = 1.0  # 0 = no clipping
    label_smoothing: float = 0.1
    valid_every: int = 500  # steps between validations (loss and greedy BLEU on data.valid)
    patience: int = 8  # stop after this many validations without a better BLEU; 0 = never
    log_every: int = 50
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # auto: bf16 autocast on a CPU with bf16 in hardware (AVX512-BF16 or AMX), else fp32;
    # fp32; bf16 (on such a CPU or a GPU with bf16; an error elsewhere). Under bf16
    # autocast the weights, gradients and Adam state stay fp32.
    precision: str = "auto"
    # NVIDIA GPUs: float32 products on TF32 tensor cores (10-bit mantissa, float32
    # range and accumulation), several times faster; false = full float32. No effect on CPUs.
    tf32: bool = True


@dataclass
class DecodeConfig:
    beam_size: int = 5  # 1 = greedy
    length_penalty: float = 1.0  # beam score / length ** length_penalty
    max_length_ratio: float = 2.0  # output at most ratio x source pieces + 5
    batch_size: int = 64  # sentences per decoding batch
    n_best: int = 1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.subword_type": ("bpe", "unigram"),
    "model.cell": ("lstm", "gru", "rnn"),
    "model.attention": ("dot", "general", "mlp"),
    "train.batch_unit": ("tokens", "sentences"),
    "train.precision": ("auto", "fp32", "bf16"),
}


def _coerce(key: str, value: Any, kind: type, where: str) -> Any:
    """Return ``value`` as ``kind`` or raise a ConfigError naming ``key``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}{key}: expected {kind.__name__}, got {value!r}")


def _merge(obj: Any, values: dict, prefix: str, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = [f"{prefix}{n}" for n in fields]
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"{where}unknown key {key!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a section of keys, got {value!r}")
            _merge(current, value, key + ".", where)
            continue
        kind = type(current)
        value = _coerce(key, value, kind, where)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        setattr(obj, name, value)


def _check(cfg: Config) -> None:
    """Cross-key checks that the types alone cannot express."""
    positive = ["data.vocab_size", "data.max_len", "model.embedding_size", "model.encoder_layers",
                "model.encoder_hidden_size", "model.decoder_layers", "model.decoder_hidden_size",
                "train.batch_size", "train.accumulate", "train.max_steps", "train.valid_every",
                "train.log_every", "decode.beam_size", "decode.batch_size", "decode.n_best", "train.lr"]
    non_negative = ["train.warmup_steps", "train.patience", "train.min_lr", "train.clip_grad_norm",
                    "train.max_epochs", "train.max_minutes", "train.threads"]
    for key in positive + non_negative:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 0 or (value == 0 and key in positive):
            raise ConfigError(f"{key}: {'must be positive' if key in positive else 'must not be negative'}")
    if not 0.0 < cfg.train.lr_decay <= 1.0:
        raise ConfigError("train.lr_decay: must be in (0, 1]")
    if cfg.train.lr_patience < 1:
        raise ConfigError("train.lr_patience: must be at least 1")
    if cfg.data.max_len_ratio < 1.0:
        raise ConfigError("data.max_len_ratio: must be at least 1")
    if cfg.decode.max_length_ratio <= 0:
        raise ConfigError("decode.max_length_ratio: must be positive")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"train.device: {cfg.train.device!r} is not auto, cpu, cuda or cuda:N")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError("model.dropout: must be in [0, 1)")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise ConfigError("train.label_smoothing: must be in [0, 1)")
    if cfg.model.share_embeddings and not cfg.data.joint_vocab:
        raise ConfigError("model.share_embeddings: needs data.joint_vocab: true")
    if cfg.model.tie_output and cfg.model.embedding_size != cfg.model.decoder_hidden_size:
        raise ConfigError("model.tie_output: needs model.embedding_size == model.decoder_hidden_size")
    enc_out = cfg.model.encoder_hidden_size * (2 if cfg.model.bidirectional else 1)
    if cfg.model.attention == "dot" and enc_out != cfg.model.decoder_hidden_size:
        raise ConfigError(f"model.attention: dot needs encoder outputs ({enc_out}) of "
                          f"model.decoder_hidden_size ({cfg.model.decoder_hidden_size})")
    if cfg.decode.n_best > cfg.decode.beam_size:
        raise ConfigError("decode.n_best: must not exceed decode.beam_size")
    if not cfg.data.train:
        raise ConfigError("data.train: no training data given")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.hidden=512"`` -> (["model", "hidden"], 512), value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. model.dropout=0.2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def fill(obj: Any, values: dict, overrides: list[str] = (), where: str = "") -> Any:
    """Set the fields of dataclass ``obj`` from nested ``values``, then from ``KEY=VALUE`` overrides."""
    _merge(obj, values or {}, "", where)
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        _merge(obj, nested, "", f"--set {text}: ")
    return obj


def config_from_dict(values: dict, overrides: list[str] = (), where: str = "") -> Config:
    cfg = fill(Config(), values, overrides, where)
    _check(cfg)
    return cfg


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``; ConfigError naming the file (and line) otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as err:
        line = Path(path).read_bytes()[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: invalid UTF-8") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {line}invalid YAML") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    if path is None:
        return config_from_dict({}, overrides)
    return config_from_dict(read_yaml(path), overrides, f"{path}: ")


def save_config(cfg: Config, path: Path) -> None:
    from nmt.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
