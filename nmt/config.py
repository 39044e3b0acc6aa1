"""Typed configuration: YAML files, dotted command-line overrides, validation.

Every key is a dataclass field below; its comment is its documentation (the
configs in ``configs/`` repeat it); a decode option declares its help text, range
and flags on its field (``option``). Unknown keys and values of the wrong type are
rejected with a message that names the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nmt.errors import ConfigError


@dataclass
class Direction:
    """One entry of ``data.directions``: a language pair and (optionally) its own files."""
    src: str = ""
    tgt: str = ""
    train: str = ""  # "" = data.train
    valid: str = ""  # "" = data.valid (the first entry of a direction gives its validation set)
    test: str = ""  # "" = data.test
    tag: str = ""  # a piece before this entry's training sources only (e.g. <BT>: back-translated)


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
    # sentencepiece trains on at most this many sentences (both sides together with a joint
    # vocabulary), drawn at random with a fixed seed when the corpus has more; 0 = all.
    spm_sample_sentences: int = 2_000_000
    # Where the training data is kept prepared (encoded, filtered, memory-mapped), in a
    # folder per fingerprint of the data and settings: "" = <run dir>/cache; a folder of
    # yours lets several runs on the same data share one preparation.
    cache_dir: str = ""
    # Several directions in one model (nmt.directions): entries "SRC-TGT" or mappings with src, tgt
    # and optional train, valid, test, tag (Direction); with more than one target language each
    # source starts with the tag <2TGT>. One vocabulary covers all. [] = src_lang -> tgt_lang.
    directions: list = field(default_factory=list)
    # Subword regularization (Kudo 2018): > 0 trains on sampled segmentations, unigram sampling
    # with this alpha or BPE-dropout with this drop rate; validation and decoding never sample.
    subword_sampling: float = 0.0
    # With subword_sampling: segmentations prepared per training pair (kept in the cache); each
    # epoch takes one of them per pair, chosen from train.seed and the epoch.
    subword_segmentations: int = 4


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
    decoder: str = "luong"  # luong (the top layer attends) or gnmt (the first does; needs input_feeding false)
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
    # Also write checkpoints/last.pt this often between validations, so that a crash or a
    # kill loses at most these minutes of training (the result does not change); 0 = only
    # at validations and at the end.
    checkpoint_every_minutes: float = 5.0
    # Keep the last N validation checkpoints as checkpoints/step-<step>.pt, for nmt-average; 0 = none.
    keep_checkpoints: int = 0
    # ema > 0: also keep an exponential moving average of the weights, updated after every step
    # t as d * average + (1 - d) * weights with d = min(ema, (1 + t) / (10 + t)) (0.999: about
    # the last 1,000 steps); validation, best.pt and decoding use the average, training goes
    # on with the weights. 0 = off.
    ema: float = 0.0
    # Fine-tuning: start from a trained model -- a run directory, a checkpoint or a model folder --
    # with its weights and vocabulary; the optimizer, schedule and step start fresh. "" = from scratch.
    init_from: str = ""
    init_sha256: str = ""  # of init_from's weights file, recorded at the start; if given, it must match


KEEP = "keep"  # an option's ``validation`` rule: validation decodes with the config's value


def option(default: Any, doc: str, *, bounds: tuple | None = None, choices: tuple | None = None,
           flag: bool = True, served: bool = False, validation: Any = None) -> Any:
    """A decode option, declared once (fairseq's ``field(metadata=...)``): its default, and in the
    metadata its help text (the command-line flag's, the configs' comment), its range (as in
    RANGES: ``"("`` marks an open lower end) or choices, whether the decoding commands take it as
    a flag, whether a request to ``nmt-serve`` may set it, and what validation decodes with
    (``validation_decode``): None = the default, ``KEEP`` = the config's value, or a value."""
    return field(default=default, metadata={"help": doc, "range": bounds, "choices": choices,
                                            "flag": flag, "served": served, "validation": validation})


@dataclass
class DecodeConfig:
    beam_size: int = option(5, "hypotheses kept at each step; 1 = greedy", bounds=(1, 1000), served=True,
                            validation=1)
    length_penalty: float = option(1.0, "finished beams ranked by score / length ** L (length_penalty_type)",
                                   bounds=(0.0, 10.0), served=True)
    length_penalty_type: str = option("length", "length: score / length ** L; "
                                      "gnmt: score / ((5 + length) / 6) ** L (Wu et al.)",
                                      choices=("length", "gnmt"), served=True)
    max_length_ratio: float = option(2.0, "output at most ratio x source pieces + 5 ...",
                                     bounds=("(", 0.0, 1000.0), served=True, validation=KEEP)
    max_length: int = option(0, "... and at most this many output pieces; 0 = no such cap",
                             bounds=(0, 10**6), served=True, validation=KEEP)
    batch_size: int = option(64, "sentences per decoding batch", bounds=(1, 10**6), validation=KEEP)
    # No shared flag: nmt-translate's own --n-best also chooses its output format, and
    # nmt-evaluate scores one translation per sentence.
    n_best: int = option(1, "translations returned per sentence, best first; at most beam_size",
                         bounds=(1, 1000), flag=False, served=True)
    min_length: int = option(0, "no end marker before this many output pieces (the maximum length wins)",
                             bounds=(0, 10**6), served=True)
    no_repeat_ngram_size: int = option(0, "N > 0: no output holds the same N pieces in a row twice",
                                       bounds=(0, 10**6), served=True)
    samples: int = option(0, "N > 0: draw N random translations per sentence instead of searching",
                          bounds=(0, 1000))
    temperature: float = option(1.0, "sampling: < 1 sharper, > 1 flatter", bounds=("(", 0.0, 100.0))
    top_k: int = option(0, "sampling: from the K most probable pieces; 0 = all", bounds=(0, 10**6))
    top_p: float = option(1.0, "sampling: from the fewest pieces whose probability reaches P; 1 = all",
                          bounds=("(", 0.0, 1.0))
    seed: int = option(0, "sampling: the same seed gives the same samples, in any batch",
                       bounds=(0, 2**32 - 1))
    target_lang: str = option("", "a model of several directions: the language to translate into "
                              "(data.directions)", served=True)
    markup: str = option("none", "keep: tags and placeholders taken out, put back by the attention",
                         choices=("none", "keep"), served=True)
    # One graph per bucket of batch and source length (nmt.graphs); off CUDA the same code runs eagerly.
    cuda_graphs: bool = option(False, "GPU: replay each decoder step as a CUDA graph "
                               "(same output, fewer launches)", validation=KEEP)


def validation_decode(decode: DecodeConfig) -> DecodeConfig:
    """Validation's decoding settings, by each option's ``validation`` rule: greedy, and every
    search control at its default unless it says otherwise -- a new control stays out of
    validation BLEU without anyone listing it."""
    fixed = {spec.name: spec.default if spec.metadata["validation"] is None else spec.metadata["validation"]
             for spec in dataclasses.fields(DecodeConfig) if spec.metadata["validation"] != KEEP}
    return dataclasses.replace(decode, **fixed)


def decode_fields(mark: str) -> list[dataclasses.Field]:
    """The DecodeConfig fields whose metadata sets ``mark`` ("flag", "served")."""
    return [spec for spec in dataclasses.fields(DecodeConfig) if spec.metadata[mark]]


def _decode_ranges() -> dict:
    """``{"decode.<field>": range}`` of the decode options that declare one (for RANGES)."""
    return {f"decode.{spec.name}": spec.metadata["range"] for spec in dataclasses.fields(DecodeConfig)
            if spec.metadata["range"] is not None}


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
    "model.decoder": ("luong", "gnmt"),
    "train.batch_unit": ("tokens", "sentences"),
    "train.precision": ("auto", "fp32", "bf16"),
}  # the decode options declare theirs on their fields


def _coerce(key: str, value: Any, kind: type, where: str) -> Any:
    """Return ``value`` as ``kind`` or raise a ConfigError naming ``key``.

    Numbers must be finite (NaN passes every ``<`` check and would fail much
    later); strings must not hold a NUL (no file name or device can).
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
            raise ConfigError(f"{where}{key}: must be a finite number, got {value!r}")
    elif kind is str:
        if isinstance(value, str) and "\0" not in value:
            return value
    raise ConfigError(f"{where}{key}: expected {kind.__name__}, got {value!r}")


def _merge(obj: Any, values: dict, prefix: str, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = [f"{prefix}{n}" for n in fields]
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"{where}unknown key {key!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        current = getattr(obj, name)
        if isinstance(current, list):  # data.directions, the one list
            setattr(obj, name, _directions(key, value, where))
            continue
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a section of keys, got {value!r}")
            _merge(current, value, key + ".", where)
            continue
        kind = type(current)
        value = _coerce(key, value, kind, where)
        choices = fields[name].metadata.get("choices") or CHOICES.get(key)
        if choices and value not in choices:
            raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(choices)}")
        setattr(obj, name, value)


def _directions(key: str, value: Any, where: str) -> list[Direction]:
    """``data.directions``: a list of "SRC-TGT" strings or mappings of Direction's keys."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}{key}: expected a list of directions, got {value!r}")
    entries = []
    for n, item in enumerate(value):
        if isinstance(item, str) and item.count("-") == 1:
            src, tgt = item.split("-")
            item = {"src": src, "tgt": tgt}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}{key}[{n}]: expected SRC-TGT or a mapping, got {item!r}")
        entry = Direction()
        _merge(entry, item, f"{key}[{n}].", where)
        entries.append(entry)
    return entries


# The range of every number: (lowest, highest), "(" for an open lower end. The upper
# bounds stop a slip of the keyboard (a hidden size of 2560000) from asking for
# terabytes or running for ever; they are far above any sensible setting. The decode
# options declare theirs on their DecodeConfig fields.
BIG = 10**12
RANGES = {
    "data.vocab_size": (1, 1_000_000), "data.max_len": (1, 100_000), "data.max_len_ratio": (1.0, 1e6),
    "data.spm_sample_sentences": (0, 10**12), "data.subword_sampling": (0.0, 0.99),
    "data.subword_segmentations": (1, 64),
    "model.embedding_size": (1, 16384), "model.encoder_layers": (1, 64),
    "model.encoder_hidden_size": (1, 16384), "model.decoder_layers": (1, 64),
    "model.decoder_hidden_size": (1, 16384), "model.dropout": (0.0, 0.99),
    "train.seed": (0, 2**32 - 1), "train.batch_size": (1, 10**8), "train.accumulate": (1, 10**6),
    "train.max_steps": (1, BIG), "train.max_epochs": (0, 10**9), "train.max_minutes": (0.0, 1e9),
    "train.checkpoint_every_minutes": (0.0, 1e9), "train.keep_checkpoints": (0, 1000),
    "train.ema": (0.0, 0.999999),
    "train.lr": ("(", 0.0, 100.0), "train.warmup_steps": (0, BIG), "train.lr_decay": ("(", 0.0, 1.0),
    "train.lr_patience": (1, 10**9), "train.min_lr": (0.0, 100.0), "train.clip_grad_norm": (0.0, 1e9),
    "train.label_smoothing": (0.0, 0.99), "train.valid_every": (1, BIG), "train.patience": (0, 10**9),
    "train.log_every": (1, BIG), "train.threads": (0, 1024),
    **_decode_ranges(),
}


def check_range(key: str, value: float, bounds: tuple | None = None) -> None:
    """ConfigError unless ``value`` is in ``bounds`` (default: ``RANGES[key]``)."""
    bounds = bounds or RANGES[key]
    open_low = bounds[0] == "("
    low, high = bounds[-2:]
    if value < low or (open_low and value == low) or value > high:
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ConfigError(f"{key}: {value!r} is out of range; expected a value in {interval}")


def check_decode(decode: "DecodeConfig", tgt_vocab_size: int | None = None) -> None:
    """The decode section alone, and against a model's target vocabulary when it is known."""
    for spec in dataclasses.fields(decode):  # each option's declared range
        if spec.metadata["range"] is not None:
            check_range(f"decode.{spec.name}", getattr(decode, spec.name), spec.metadata["range"])
    if decode.n_best > decode.beam_size:
        raise ConfigError(f"decode.n_best: {decode.n_best} exceeds decode.beam_size ({decode.beam_size})")
    # The first step ranks 2 x beam_size candidates among the vocabulary's pieces.
    if tgt_vocab_size is not None and 2 * decode.beam_size > tgt_vocab_size:
        raise ConfigError(f"decode.beam_size: {decode.beam_size} is too large for a target vocabulary "
                          f"of {tgt_vocab_size} pieces (at most {tgt_vocab_size // 2})")


def _check(cfg: Config) -> None:
    """Ranges, then the cross-key checks that the types alone cannot express."""
    for key in RANGES:
        section, name = key.split(".")
        if section != "decode":
            check_range(key, getattr(getattr(cfg, section), name))
    check_decode(cfg.decode)
    for key in ("data.src_lang", "data.tgt_lang"):
        value = getattr(cfg.data, key.split(".")[1])
        if not LANGUAGE.fullmatch(value):
            raise ConfigError(f"{key}: {value!r} is not a language code (non-empty; no space, '/', '<' "
                              "or '>')")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"train.device: {cfg.train.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.model.share_embeddings and not cfg.data.joint_vocab:
        raise ConfigError("model.share_embeddings: needs data.joint_vocab: true")
    if cfg.model.tie_output and cfg.model.embedding_size != cfg.model.decoder_hidden_size:
        raise ConfigError("model.tie_output: needs model.embedding_size == model.decoder_hidden_size")
    enc_out = cfg.model.encoder_hidden_size * (2 if cfg.model.bidirectional else 1)
    if cfg.model.attention == "dot" and enc_out != cfg.model.decoder_hidden_size:
        raise ConfigError(f"model.attention: dot needs encoder outputs ({enc_out}) of "
                          f"model.decoder_hidden_size ({cfg.model.decoder_hidden_size})")
    if cfg.model.decoder == "gnmt" and cfg.model.input_feeding:
        raise ConfigError("model.decoder: gnmt has no input feeding; set model.input_feeding: false")
    if not cfg.data.train and not all(d.train for d in cfg.data.directions):
        raise ConfigError("data.train: no training data given")
    _check_directions(cfg.data.directions)


LANGUAGE = re.compile(r"[^\s/<>]+")  # a language code: in file names and in the tag <2xx>


def _check_directions(entries: list[Direction]) -> None:
    seen = set()
    for n, entry in enumerate(entries):
        key = f"data.directions[{n}]"
        for side in ("src", "tgt"):
            if not LANGUAGE.fullmatch(getattr(entry, side)):
                raise ConfigError(f"{key}.{side}: {getattr(entry, side)!r} is not a language code "
                                  "(non-empty; no space, '/', '<' or '>')")
        if entry.tag and not re.fullmatch(r"<[^\s<>]+>", entry.tag) or entry.tag.startswith("<2"):
            raise ConfigError(f"{key}.tag: {entry.tag!r}: expected one piece such as <BT> "
                              "(no space; <2...> is a target-language tag)")
        if (entry.src, entry.tgt, entry.train, entry.tag) in seen:
            raise ConfigError(f"{key}: the same direction, data and tag as an entry before it")
        seen.add((entry.src, entry.tgt, entry.train, entry.tag))


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
        _merge(obj, nested, "", f"--set {text if text.isprintable() else repr(text)}: ")
    return obj


def config_from_dict(values: dict, overrides: list[str] = (), where: str = "") -> Config:
    """The one place a config is checked: every key's type, range and consistency."""
    cfg = fill(Config(), values, overrides, where)
    try:
        _check(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    return cfg


def decode_settings(decode: DecodeConfig, overrides: dict, tgt_vocab_size: int | None = None
                    ) -> DecodeConfig:
    """``decode`` with the given (non-None) values replaced, checked like a config's decode
    section: command-line flags, server requests and Python keyword arguments pass through here.

    The beam is at least n-best wide: an ``n_best`` wider than the beam, with no ``beam_size``
    given, widens the beam to it.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    decode = dataclasses.replace(decode)
    _merge(decode, given, "decode.", "")
    widened = "beam_size" not in given and decode.n_best > decode.beam_size
    if widened:
        decode.beam_size = decode.n_best
    try:
        check_decode(decode, tgt_vocab_size)
    except ConfigError as err:
        if widened:  # the beam that fails is the one n_best asked for: say so
            raise ConfigError(f"{err}; the beam is as wide as decode.n_best") from None
        raise
    return decode


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
    from nmt.io import write_text
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
