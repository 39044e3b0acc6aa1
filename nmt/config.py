"""Typed configuration: YAML files, dotted command-line overrides, validation.

Every key is a dataclass field below, declared once with ``option``: its default, its help
text (the command-line flag's and the configs' comment: ``config_text`` writes the files
in ``configs/``), its range or choices. Unknown keys and values of the wrong type are
rejected with a message that names the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import itertools
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from nmt.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The numbers from ``low`` to ``high``; ``open_low``: ``low`` itself excluded."""
    low: float
    high: float
    open_low: bool = False

    def check(self, key: str, value: float) -> None:
        """ConfigError naming ``key`` unless ``value`` is in the range."""
        if value < self.low or (self.open_low and value == self.low) or value > self.high:
            interval = f"{'(' if self.open_low else '['}{self.low}, {self.high}]"
            raise ConfigError(f"{key}: {value!r} is out of range; expected a value in {interval}")


KEEP = "keep"  # an option's ``validation`` rule: validation decodes with the config's value


def option(default: Any, doc: str, *, bounds: Range | None = None, choices: tuple | None = None,
           flag: bool = True, served: bool = False, validation: Any = None) -> Any:
    """An option, declared once (fairseq's ``field(metadata=...)``): its default (a list is
    copied for each instance), its help, its range or choices; for a decode option whether the
    decoding commands take it as a flag, whether ``nmt-serve`` requests may set it, and what
    validation decodes with: None = the default, ``KEEP`` = the config's value, or a value."""
    meta = {"help": doc, "range": bounds, "choices": choices, "flag": flag, "served": served,
            "validation": validation}
    if isinstance(default, list):
        return field(default_factory=default.copy, metadata=meta)
    return field(default=default, metadata=meta)


# The upper bounds stop a slip of the keyboard (a hidden size of 2560000) from asking for
# terabytes or running for ever; they are far above any sensible setting.
BIG = 10**12
SIZE, LAYERS, SEED, FRACTION = Range(1, 16384), Range(1, 64), Range(0, 2**32 - 1), Range(0.0, 0.99)
COUNT = Range(0, 10**6)


@dataclass
class Direction:
    """One entry of ``data.directions``: a language pair and (optionally) its own files."""
    src: str = option("", "source language")
    tgt: str = option("", "target language")
    train: str = option("", '"" = data.train')
    valid: str = option("", '"" = data.valid (a direction\'s first entry gives its validation set)')
    test: str = option("", '"" = data.test')
    tag: str = option("", "a piece before this entry's sources only (e.g. <BT>: back-translated)")


@dataclass
class DataConfig:
    loader: str = option("text", "text (files <prefix>.<lang>, one sentence a line); json, csv "
                         "or parquet (Hugging Face datasets); or a hub dataset or its folder")
    train: str = option("data/multi30k/train", "a file prefix (text), a data file (json, csv, "
                        "parquet) or a split name such as train (hub dataset)")
    valid: str = option("data/multi30k/val", 'validation split, given as data.train; "" = none')
    test: str = option("data/multi30k/test2016", 'scored after training; "" = none')
    src_lang: str = option("de", "source language code (in file names and tags <2xx>)")
    tgt_lang: str = option("en", "target language code")
    src_field: str = option("", "datasets loaders: the source side's record field, dots reaching "
                            'into nested records (translation.de); "" = the language code')
    tgt_field: str = option("", "datasets loaders: the target side's record field")
    hub_config: str = option("", "the configuration name of a hub dataset that has several")
    subword_type: str = option("bpe", "sentencepiece bpe or unigram", choices=("bpe", "unigram"))
    vocab_size: int = option(8000, "pieces of each sentencepiece model", bounds=Range(1, 10**6))
    joint_vocab: bool = option(True, "one sentencepiece model for both sides (false: one each)")
    max_len: int = option(100, "drop training pairs longer than this many pieces on a side ...",
                          bounds=Range(1, 100_000))
    max_len_ratio: float = option(3.0, "... or with a longer/shorter side ratio above this",
                                  bounds=Range(1.0, 1e6))
    spm_sample_sentences: int = option(2_000_000, "sentencepiece trains on at most this many "
                                       "sentences; 0 = all", bounds=Range(0, BIG))
    cache_dir: str = option("", 'the prepared training data: "" = <run dir>/cache; a folder of '
                            "yours lets runs on the same data share one preparation")
    directions: list = option([], "several directions in one model: SRC-TGT entries (e.g. [de-en, "
                              "en-de]) or mappings of src, tgt and optional train, valid, test, "
                              "tag; [] = src_lang -> tgt_lang")
    subword_sampling: float = option(0.0, "> 0: train on sampled segmentations (unigram alpha or "
                                     "BPE-dropout rate; Kudo 2018)", bounds=FRACTION)
    subword_segmentations: int = option(4, "with subword_sampling: segmentations kept per pair; "
                                        "one per epoch", bounds=Range(1, 64))


@dataclass
class ModelConfig:
    cell: str = option("lstm", "lstm, gru or rnn (plain tanh)", choices=("lstm", "gru", "rnn"))
    embedding_size: int = option(256, "width of the embeddings", bounds=SIZE)
    encoder_layers: int = option(2, "stacked encoder layers", bounds=LAYERS)
    encoder_hidden_size: int = option(256, "per direction", bounds=SIZE)
    bidirectional: bool = option(True, "the encoder reads the source both ways")
    decoder_layers: int = option(1, "stacked decoder layers", bounds=LAYERS)
    decoder_hidden_size: int = option(256, "width of the decoder's states", bounds=SIZE)
    attention: str = option("general", "dot, general (Luong) or mlp (Bahdanau)",
                            choices=("dot", "general", "mlp"))
    input_feeding: bool = option(True, "feed the last attentional vector back in")
    decoder: str = option("luong", "luong (the top layer attends) or gnmt (the first does; needs "
                          "input_feeding: false)", choices=("luong", "gnmt"))
    dropout: float = option(0.3, "on embeddings, between layers, on the attentional vector",
                            bounds=FRACTION)
    tie_output: bool = option(True, "the output layer shares the target embeddings (needs "
                              "embedding_size == decoder_hidden_size)")
    share_embeddings: bool = option(True, "one table for both sides (needs data.joint_vocab)")


@dataclass
class TrainConfig:
    seed: int = option(1, "seeds the weights, the batches and dropout", bounds=SEED)
    batch_size: int = option(2048, "in batch_unit (a step: processes x accumulate batches)",
                             bounds=Range(1, 10**8))
    batch_unit: str = option("tokens", "tokens (padded, the longer side) or sentences",
                             choices=("tokens", "sentences"))
    accumulate: int = option(1, "batches per step and process", bounds=Range(1, 10**6))
    max_steps: int = option(20000, "stop after this many steps", bounds=Range(1, BIG))
    max_epochs: int = option(0, "stop after this many epochs; 0 = no limit", bounds=Range(0, 10**9))
    max_minutes: float = option(0.0, "stop after this many minutes of training; 0 = no limit",
                                bounds=Range(0.0, 1e9))
    lr: float = option(2e-3, "Adam's learning rate", bounds=Range(0.0, 100.0, open_low=True))
    warmup_steps: int = option(100, "linear warm-up from 0 to lr", bounds=Range(0, BIG))
    lr_decay: float = option(0.5, "multiply lr by this when validation BLEU stalls ...",
                             bounds=Range(0.0, 1.0, open_low=True))
    lr_patience: int = option(2, "... for this many validations", bounds=Range(1, 10**9))
    min_lr: float = option(1e-5, "the decay stops here", bounds=Range(0.0, 100.0))
    clip_grad_norm: float = option(1.0, "0 = no clipping", bounds=Range(0.0, 1e9))
    label_smoothing: float = option(0.1, "of the training loss", bounds=FRACTION)
    valid_every: int = option(500, "steps between validations (loss, greedy BLEU on data.valid)",
                              bounds=Range(1, BIG))
    patience: int = option(8, "stop after this many validations with no better BLEU; 0 = never",
                           bounds=Range(0, 10**9))
    log_every: int = option(50, "steps between log lines", bounds=Range(1, BIG))
    threads: int = option(0, "torch CPU threads; 0 = torch's default", bounds=Range(0, 1024))
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    precision: str = option("auto", "auto (bf16 autocast on CPUs with bf16 in hardware, else "
                            "fp32), fp32 or bf16; weights and Adam state stay fp32",
                            choices=("auto", "fp32", "bf16"))
    tf32: bool = option(True, "NVIDIA GPUs: float32 products on TF32 tensor cores; false = full "
                        "float32")
    checkpoint_every_minutes: float = option(
        5.0, "also save checkpoints/last.pt this often; 0 = only at validations",
        bounds=Range(0.0, 1e9))
    keep_checkpoints: int = option(0, "keep the last N validation checkpoints (step-<step>.pt) "
                                   "for nmt-average", bounds=Range(0, 1000))
    ema: float = option(0.0, "> 0 (e.g. 0.999): validate, keep and decode a moving average of the "
                        "weights; 0 = off", bounds=Range(0.0, 0.999999))
    init_from: str = option("", "fine-tune: start from the weights and vocabulary of this run "
                            "directory, checkpoint or model folder")
    init_sha256: str = option("", "its weights' sha256, recorded when the run starts; if given, "
                              "it must match")


@dataclass
class DecodeConfig:
    beam_size: int = option(5, "hypotheses kept at each step; 1 = greedy", bounds=Range(1, 1000),
                            served=True, validation=1)
    length_penalty: float = option(1.0, "finished beams ranked by score / length ** L "
                                   "(length_penalty_type)", bounds=Range(0.0, 10.0), served=True)
    length_penalty_type: str = option("length", "length: score / length ** L; "
                                      "gnmt: score / ((5 + length) / 6) ** L (Wu et al.)",
                                      choices=("length", "gnmt"), served=True)
    max_length_ratio: float = option(2.0, "output at most ratio x source pieces + 5 ...",
                                     bounds=Range(0.0, 1000.0, open_low=True), served=True,
                                     validation=KEEP)
    max_length: int = option(0, "... and at most this many output pieces; 0 = no such cap",
                             bounds=COUNT, served=True, validation=KEEP)
    batch_size: int = option(64, "sentences per decoding batch", bounds=Range(1, 10**6),
                             validation=KEEP)
    # No shared flag: nmt-translate's own --n-best also chooses its output format, and
    # nmt-evaluate scores one translation per sentence.
    n_best: int = option(1, "translations returned per sentence, best first; at most beam_size",
                         bounds=Range(1, 1000), flag=False, served=True)
    min_length: int = option(0, "no end marker before this many pieces (the maximum length "
                             "wins)", bounds=COUNT, served=True)
    no_repeat_ngram_size: int = option(0, "N > 0: no output holds the same N pieces in a row "
                                       "twice", bounds=COUNT, served=True)
    samples: int = option(0, "N > 0: draw N random translations per sentence, not a "
                          "search", bounds=Range(0, 1000))
    temperature: float = option(1.0, "sampling: < 1 sharper, > 1 flatter",
                                bounds=Range(0.0, 100.0, open_low=True))
    top_k: int = option(0, "sampling: from the K most probable pieces; 0 = all", bounds=COUNT)
    top_p: float = option(1.0, "sampling: from the fewest pieces whose probability reaches P; "
                          "1 = all", bounds=Range(0.0, 1.0, open_low=True))
    seed: int = option(0, "sampling: the same seed gives the same samples, in any batch",
                       bounds=SEED)
    target_lang: str = option("", "several directions in one model: the language to "
                              "translate into", served=True)
    markup: str = option("none", "keep: tags and placeholders taken out, put back by the "
                         "attention", choices=("none", "keep"), served=True)
    # One graph per bucket of batch and source length (nmt.graphs); off CUDA, eager.
    cuda_graphs: bool = option(False, "GPU: replay each decoder step as a CUDA graph "
                               "(same output, fewer launches)", validation=KEEP)


def validation_decode(decode: DecodeConfig) -> DecodeConfig:
    """Validation's decoding settings, by each option's ``validation`` rule: greedy, and every
    search control at its default unless it says otherwise -- a new control stays out of
    validation BLEU without anyone listing it."""
    rules = {spec: spec.metadata["validation"] for spec in dataclasses.fields(DecodeConfig)}
    return dataclasses.replace(decode, **{spec.name: spec.default if rule is None else rule
                                          for spec, rule in rules.items() if rule != KEEP})


def decode_fields(mark: str) -> list[dataclasses.Field]:
    """The DecodeConfig fields whose metadata sets ``mark`` ("flag", "served")."""
    return [spec for spec in dataclasses.fields(DecodeConfig) if spec.metadata[mark]]


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
def _coerce(key: str, value: Any, kind: type, where: str) -> Any:
    """``value`` as ``kind``, or a ConfigError naming ``key``. Numbers must be finite (NaN passes
    every ``<`` check and would fail much later); strings hold no NUL (no file name can)."""
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is int and real and isinstance(value, numbers.Integral):
        return int(value)
    if kind is float and real:
        try:
            if math.isfinite(value):
                return float(value)
        except OverflowError:  # an int beyond any float
            pass
        raise ConfigError(f"{where}{key}: must be a finite number, got {value!r}")
    if kind in (bool, str) and isinstance(value, kind) and "\0" not in str(value):
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
        choices = fields[name].metadata.get("choices")
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


def check_ranges(obj: Any, prefix: str) -> None:
    """Each option of dataclass ``obj`` (a config section) in its declared range."""
    for spec in dataclasses.fields(obj):
        if spec.metadata.get("range") is not None:
            spec.metadata["range"].check(prefix + spec.name, getattr(obj, spec.name))


def check_decode(decode: DecodeConfig, tgt_vocab_size: int | None = None) -> None:
    """The decode section alone, and against a model's target vocabulary when it is known."""
    check_ranges(decode, "decode.")
    if decode.n_best > decode.beam_size:
        raise ConfigError(f"decode.n_best: {decode.n_best} exceeds decode.beam_size "
                          f"({decode.beam_size})")
    # The first step ranks 2 x beam_size candidates among the vocabulary's pieces.
    if tgt_vocab_size is not None and 2 * decode.beam_size > tgt_vocab_size:
        raise ConfigError(f"decode.beam_size: {decode.beam_size} is too large for a target "
                          f"vocabulary of {tgt_vocab_size} pieces (at most {tgt_vocab_size // 2})")


def _check(cfg: Config) -> None:
    """Ranges, then the cross-key checks that the types alone cannot express."""
    for section in ("data", "model", "train"):
        check_ranges(getattr(cfg, section), section + ".")
    check_decode(cfg.decode)
    for side in ("src", "tgt"):
        _check_language(f"data.{side}_lang", getattr(cfg.data, f"{side}_lang"))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"train.device: {cfg.train.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.model.share_embeddings and not cfg.data.joint_vocab:
        raise ConfigError("model.share_embeddings: needs data.joint_vocab: true")
    if cfg.model.tie_output and cfg.model.embedding_size != cfg.model.decoder_hidden_size:
        raise ConfigError("model.tie_output: needs model.embedding_size == "
                          "model.decoder_hidden_size")
    enc_out = cfg.model.encoder_hidden_size * (2 if cfg.model.bidirectional else 1)
    if cfg.model.attention == "dot" and enc_out != cfg.model.decoder_hidden_size:
        raise ConfigError(f"model.attention: dot needs encoder outputs ({enc_out}) of "
                          f"model.decoder_hidden_size ({cfg.model.decoder_hidden_size})")
    if cfg.model.decoder == "gnmt" and cfg.model.input_feeding:
        raise ConfigError("model.decoder: gnmt has no input feeding; set model.input_feeding: "
                          "false")
    if not cfg.data.train and not all(d.train for d in cfg.data.directions):
        raise ConfigError("data.train: no training data given")
    _check_directions(cfg.data.directions)


LANGUAGE = re.compile(r"[^\s/<>]+")  # a language code: in file names and in the tag <2xx>


def _check_language(key: str, value: str) -> None:
    if not LANGUAGE.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not a language code (non-empty; no space, '/', "
                          "'<' or '>')")


def _check_directions(entries: list[Direction]) -> None:
    seen = set()
    for n, entry in enumerate(entries):
        key = f"data.directions[{n}]"
        for side in ("src", "tgt"):
            _check_language(f"{key}.{side}", getattr(entry, side))
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
    """Set the fields of dataclass ``obj`` from nested ``values``, then from ``KEY=VALUE``
    overrides."""
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
    With no ``beam_size`` given, an ``n_best`` wider than the beam widens it."""
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


COMMENT_AT = 32  # the column of a config file's comments (0-based; 66 more to 100)


def config_text(path: str | Path) -> str:
    """Config file ``path`` as it should read: its opening comment lines, then each key it sets
    in the order of the fields, with its value as loaded and its help as the comment (wrapped
    at 100 columns). It writes the files in ``configs/`` and a test holds them to it: after
    editing one, or a help text, ``Path(p).write_text(config_text(p))``."""
    text = Path(path).read_text(encoding="utf-8")
    header = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())
    return "\n".join([*header, *_yaml_lines(load_config(path), read_yaml(path), "")]) + "\n"


def _yaml_lines(obj: Any, given: dict, indent: str) -> Iterator[str]:
    """The lines of the fields of dataclass ``obj`` named in ``given``, nested as it is."""
    for spec in (spec for spec in dataclasses.fields(obj) if spec.name in given):
        value = getattr(obj, spec.name)
        if dataclasses.is_dataclass(value):
            yield f"{indent}{spec.name}:"
            yield from _yaml_lines(value, given[spec.name], indent + "  ")
            continue
        if isinstance(value, list):  # data.directions: each entry's keys that are set
            value = [{k: v for k, v in dataclasses.asdict(entry).items() if v} for entry in value]
        flow = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True,
                              sort_keys=False).removesuffix("\n...\n").strip()
        entry = f"{indent}{spec.name}: {flow}"
        notes = [" " * COMMENT_AT + "# " + note for note in _wrap(spec.metadata["help"], 66)]
        if len(entry) < COMMENT_AT:  # the comment starts on the key's line, else under it
            yield from [entry + notes[0][len(entry):], *notes[1:]]
        else:
            yield from [entry, *notes]


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``: a clause (up to "; ") that does not fit on the
    line starts the next one if it fits there, else the words run on."""
    lines: list[str] = []
    for clause in re.split(r"(?<=;) ", text):
        if lines and len(lines[-1]) + 1 + len(clause) <= width:
            lines[-1] += " " + clause
        elif len(clause) <= width or not lines:
            lines += textwrap.wrap(clause, width, break_on_hyphens=False)
        else:
            lines[-1:] = textwrap.wrap(f"{lines[-1]} {clause}", width, break_on_hyphens=False)
    return lines
