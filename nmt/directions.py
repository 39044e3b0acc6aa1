"""Several translation directions in one model (``data.directions``; Johnson et al. 2017).

Each entry is a language pair with, optionally, its own files and a tag; all train one model and
vocabulary. With several target languages every source starts with the tag ``<2xx>``, in
training and decoding; an entry's ``tag`` (``<BT>``: back-translated) goes before its training
sources only. Tags are control symbols (an input writing ``<2en>`` is text). Without
``data.directions``: the one direction ``data.src_lang -> data.tgt_lang``, untagged.
"""
from __future__ import annotations

from dataclasses import replace

from nmt.config import DataConfig, Direction
from nmt.errors import ConfigError


def entries(data: DataConfig) -> list[Direction]:
    """The training entries, each with its files filled in from the data section's."""
    given = data.directions or [Direction(data.src_lang, data.tgt_lang)]
    return [replace(e, train=e.train or data.train, valid=e.valid or data.valid,
                    test=e.test or data.test) for e in given]


def label(entry: Direction) -> str:
    return f"{entry.src}-{entry.tgt}"


def directions(data: DataConfig) -> list[Direction]:
    """One entry per direction (the first of each), in order: what is validated and tested."""
    first: dict[str, Direction] = {}
    for entry in entries(data):
        first.setdefault(label(entry), entry)
    return list(first.values())


def target_languages(data: DataConfig) -> list[str]:
    return list(dict.fromkeys(e.tgt for e in entries(data)))


def language_tag(lang: str) -> str:
    return f"<2{lang}>"


def control_symbols(data: DataConfig) -> list[str]:
    """Every tag a source may start with: control symbols of the source vocabulary."""
    targets = target_languages(data)
    tags = [language_tag(lang) for lang in targets] if len(targets) > 1 else []
    return tags + list(dict.fromkeys(e.tag for e in entries(data) if e.tag))


def source_tags(data: DataConfig, entry: Direction, training: bool) -> list[str]:
    """The tags before a source sentence of ``entry`` (its own tag in training only)."""
    tags = [language_tag(entry.tgt)] if len(target_languages(data)) > 1 else []
    return tags + ([entry.tag] if training and entry.tag else [])


def side_config(data: DataConfig, entry: Direction) -> DataConfig:
    """The data section as one direction's: its languages and files (what nmt.data reads)."""
    return replace(data, src_lang=entry.src, tgt_lang=entry.tgt, train=entry.train,
                   valid=entry.valid, test=entry.test, directions=[])


def for_target(data: DataConfig, target_lang: str, what: str = "target_lang") -> Direction:
    """The direction a request for ``target_lang`` ("" = the model's only one) translates;
    ConfigError naming ``what`` otherwise."""
    targets = target_languages(data)
    if not target_lang and len(targets) > 1:
        raise ConfigError(f"{what}: this model translates into {', '.join(targets)}: choose one")
    lang = target_lang or targets[0]
    found = [d for d in directions(data) if d.tgt == lang]
    if not found:
        raise ConfigError(f"{what}: {lang!r}: this model translates into {', '.join(targets)}")
    return found[0]
