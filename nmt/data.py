"""Reading parallel text (whole, or streamed in chunks), length filtering, token-based batching.
A batch's source ends with the end marker (``A B C _``), its decoder input starts with it
(``_ x y``) and its target ends with it (``x y _``): docs/model.md §3."""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from nmt.config import DataConfig
from nmt.directions import directions, entries, side_config
from nmt.errors import ConfigError, DataError
from nmt.io import open_input, read_chunks
from nmt.vocab import END, PAD

log = logging.getLogger("nmt")

FILE_LOADERS = ("json", "csv", "parquet")
T = TypeVar("T")
CHUNK = 50_000  # sentences read, encoded and filtered at a time: memory stays flat for any corpus


def file_identity(path: Path) -> dict:
    """A file's size, line count and full sha256, in one pass: a full hash sees any change (also
    ``cp -p``, an edit in place), and a copied or moved corpus keeps its identity."""
    digest = hashlib.sha256()
    lines = 0
    last = b"\n"
    with open_input(path) as f:
        while block := f.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return {"size": path.stat().st_size, "lines": lines + (last != b"\n"),
            "sha256": digest.hexdigest()}


def _stat(path: Path) -> tuple:
    st = path.stat()  # ctime: any write changes it, and no user tool can set it back
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _check_unchanged(paths: list[Path], stats: list[tuple]) -> None:
    for path, before in zip(paths, stats):
        if _stat(path) != before:
            raise DataError(f"{path}: changed while it was read; run again")


class TextPairs:
    """Line-aligned files ``<prefix>.<src_lang>`` and ``<prefix>.<tgt_lang>``, streamed."""

    def __init__(self, cfg: DataConfig, prefix: str):
        self.paths = [Path(f"{prefix}.{cfg.src_lang}"), Path(f"{prefix}.{cfg.tgt_lang}")]
        self.where = str(self.paths[0])
        self.stats: list[tuple] = []

    def identity(self) -> dict:
        """What a prepared corpus is keyed by (``pairs``: its size); DataError if misaligned."""
        self.stats = [_stat(p) for p in self.paths]
        files = [file_identity(p) for p in self.paths]
        self.check_aligned(*(f["lines"] for f in files))
        return {"loader": "text", "files": files, "pairs": files[0]["lines"]}

    def check_aligned(self, n_src: int, n_tgt: int) -> None:
        if n_src != n_tgt:
            raise DataError(f"{self.paths[0]} has {n_src} lines but {self.paths[1]} has {n_tgt}: "
                            "parallel files must be line-aligned")

    def side(self, which: int, size: int = CHUNK) -> Iterator[list[str]]:
        """The sentences of one side (0: source, 1: target), ``size`` at a time."""
        return read_chunks(str(self.paths[which]), size)

    def check_unchanged(self) -> None:
        _check_unchanged(self.paths, self.stats)


class DatasetPairs:
    """A split read through Hugging Face ``datasets`` (memory-mapped Arrow), streamed in batches."""

    def __init__(self, cfg: DataConfig, split: str):
        self.cfg = cfg
        self.split = split
        self.data, self.where = _load_dataset(cfg, split)
        self.fields = (cfg.src_field or cfg.src_lang, cfg.tgt_field or cfg.tgt_lang)
        self.file = Path(split) if cfg.loader in FILE_LOADERS else None
        self.stats: list[tuple] = []

    def identity(self) -> dict:
        if self.file is not None:
            self.stats = [_stat(self.file)]
            origin = file_identity(self.file)
        else:  # datasets' own fingerprint of the dataset it loaded
            origin = {"config": self.cfg.hub_config, "split": self.split,
                      "fingerprint": self.data._fingerprint}
        return {"loader": self.cfg.loader, "fields": self.fields, "origin": origin,
                "pairs": self.data.num_rows}

    def side(self, which: int, size: int = CHUNK) -> Iterator[list[str]]:
        field = self.fields[which]
        top = field.split(".")[0]
        for first, batch in zip(itertools.count(1, size), self.data.iter(batch_size=size)):
            if top not in batch:
                raise DataError(f"{self.where}: record {first}: no field {field!r}")
            yield [_field({top: value}, field, f"{self.where}: record {first + k}")
                   for k, value in enumerate(batch[top])]

    def check_unchanged(self) -> None:
        _check_unchanged([self.file] if self.file is not None else [], self.stats)


def pair_source(cfg: DataConfig, split: str) -> TextPairs | DatasetPairs:
    return TextPairs(cfg, split) if cfg.loader == "text" else DatasetPairs(cfg, split)


def input_files(cfg: DataConfig) -> list[Path]:
    """The local files that the run's splits (train, valid, test) name, of every direction."""
    files = []
    for entry in entries(cfg):
        splits = [s for s in (entry.train, entry.valid, entry.test) if s]
        if cfg.loader == "text":
            files += [Path(f"{s}.{lang}") for s in splits for lang in (entry.src, entry.tgt)]
        elif cfg.loader in FILE_LOADERS:
            files += [Path(s) for s in splits]
    return list(dict.fromkeys(files))


def check_inputs(cfg: DataConfig) -> None:
    """Before any work: the input files are readable and the (small) validation and test sets
    read without error, so no bad line in them is found hours later."""
    for path in input_files(cfg):
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if not path.is_file():
            raise DataError(f"{path}: is not a regular file (a directory, a device or a pipe); "
                            "the training data is read more than once")
        if not os.access(path, os.R_OK):
            raise DataError(f"{path}: permission denied; check the permissions of the file")
    for direction in directions(cfg):
        for split, which in ((direction.valid, "validation"), (direction.test, "test")):
            if split:
                load_split(side_config(cfg, direction), split, which)


def absolute_paths(cfg: DataConfig) -> DataConfig:
    """``cfg`` with its file paths absolute (``~`` expanded): the run's config works anywhere."""
    absolute = lambda s: os.path.abspath(os.path.expanduser(s)) if s else s  # noqa: E731
    files = cfg.loader in ("text", *FILE_LOADERS)
    named = files or not Path(cfg.loader).is_dir()
    loader = cfg.loader if named else absolute(cfg.loader)  # a local dataset folder
    keys = ("train", "valid", "test")
    splits = {k: absolute(getattr(cfg, k)) for k in keys} if files else {}
    given = [replace(e, **{k: absolute(getattr(e, k)) for k in keys}) if files else e
             for e in cfg.directions]
    return replace(cfg, loader=loader, cache_dir=absolute(cfg.cache_dir), directions=given,
                   **splits)


def load_split(cfg: DataConfig, split: str, which: str = "split") -> tuple[list[str], list[str]]:
    """The raw (source, target) sentences of a small split: a file prefix (loader "text"), a data
    file (json, csv, parquet) or a split name of a hub / local dataset folder."""
    source = pair_source(cfg, split)
    src, tgt = (list(itertools.chain.from_iterable(source.side(k))) for k in (0, 1))
    if isinstance(source, TextPairs):
        source.check_aligned(len(src), len(tgt))
    if not src:
        raise DataError(f"{source.where}: the {which} corpus is empty")
    return src, tgt


def _field(record: dict, dotted: str, where: str) -> str:
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: no field {dotted!r}")
        value = value[part]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {dotted!r} is {type(value).__name__}, expected text")
    return value


def _load_dataset(cfg: DataConfig, split: str):
    """A split through Hugging Face ``datasets`` (an optional extra), and its name in messages."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data.loader: {cfg.loader!r} reads through Hugging Face datasets: "
                          "pip install 'nmt[datasets]'") from None

    datasets.disable_progress_bars()
    try:
        if cfg.loader in FILE_LOADERS:
            if not Path(split).is_file():
                raise DataError(f"{split}: file not found")
            return datasets.load_dataset(cfg.loader, data_files=split, split="train"), split
        return (datasets.load_dataset(cfg.loader, cfg.hub_config or None, split=split),
                f"{cfg.loader}[{split}]")
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; the message is what helps
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{split}: cannot load with datasets ({cfg.loader}): {first}") from None


def length_filter(src_lens: np.ndarray, tgt_lens: np.ndarray, max_len: int,
                  max_ratio: float) -> tuple[np.ndarray, dict]:
    """The mask of the pairs to train on, and counts of what was dropped and why."""
    empty = (src_lens == 0) | (tgt_lens == 0)
    too_long = ~empty & ((src_lens > max_len) | (tgt_lens > max_len))
    lopsided = np.maximum(src_lens, tgt_lens) > max_ratio * np.minimum(src_lens, tgt_lens)
    bad_ratio = ~empty & ~too_long & lopsided
    keep = ~(empty | too_long | bad_ratio)
    return keep, {"kept": int(keep.sum()), "empty": int(empty.sum()),
                  "too_long": int(too_long.sum()), "bad_ratio": int(bad_ratio.sum())}


@dataclass(eq=False)
class Pieces:
    """Sentences of piece ids in one flat array (``offsets`` and ``lengths`` index it; maybe
    memory-mapped, nmt.corpus): a batch is padded with a few array operations, not a loop."""
    flat: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, seqs: list[list[int]]) -> "Pieces":
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64,
                               count=int(lengths.sum())), offsets, lengths)

    def padded(self, idx: np.ndarray, end_first: bool) -> np.ndarray:
        """Sentences ``idx`` as [B, longest + 1], the end marker first or last, padded with PAD."""
        lengths = self.lengths[idx]
        width = int(with_end_marker(lengths.max()))
        cols = np.arange(width)[None, :] - int(end_first)  # position in the sentence
        real = (cols >= 0) & (cols < lengths[:, None])
        out = np.full(real.shape, PAD, dtype=np.int64)
        out[real] = self.flat[(self.offsets[idx][:, None] + cols)[real]]
        out[np.arange(len(idx)), 0 if end_first else lengths] = END
        return out


@dataclass
class Batch:
    """Sentences as padded tensors: the source, and for training their targets."""
    src: torch.Tensor  # [B, S] source ids + end marker, padded
    src_lengths: np.ndarray  # [B] with the end marker, on the host (packing is planned there)
    tgt_in: torch.Tensor | None = None  # [B, T] end marker + target ids, padded
    tgt_out: torch.Tensor | None = None  # [B, T] target ids + end marker, padded
    positions: torch.Tensor | None = None  # [N] indices into tgt_out.view(-1) of real tokens
    n_tokens: int = 0  # real target tokens (end markers included), known on the host

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on ``device``; to a GPU from pinned memory, without waiting."""
        device = torch.device(device)
        if device.type != "cuda":
            return self
        move = lambda t: (  # noqa: E731
            None if t is None else t.pin_memory().to(device, non_blocking=True))
        return Batch(src=move(self.src), src_lengths=self.src_lengths, tgt_in=move(self.tgt_in),
                     tgt_out=move(self.tgt_out), positions=move(self.positions),
                     n_tokens=self.n_tokens)


def with_end_marker(lengths: np.ndarray) -> np.ndarray:
    """[B] sentence lengths in pieces -> with the end marker each has (docs/model.md §3)."""
    return lengths + 1


def without_end_marker(lengths: np.ndarray) -> np.ndarray:
    """The inverse of ``with_end_marker``."""
    return lengths - 1


def batch_of(src: Pieces | list[list[int]], tgt: Pieces | list[list[int]] | None = None,
             idx: np.ndarray | None = None) -> Batch:
    """The batch of sentences ``idx`` (default: all) of ``src`` and, to train, of ``tgt``."""
    src = src if isinstance(src, Pieces) else Pieces.of(src)
    idx = np.arange(len(src.lengths)) if idx is None else idx
    source = torch.from_numpy(src.padded(idx, end_first=False))
    src_lengths = with_end_marker(src.lengths[idx].astype(np.int64))
    if tgt is None:
        return Batch(source, src_lengths)
    tgt = tgt if isinstance(tgt, Pieces) else Pieces.of(tgt)
    tgt_out = tgt.padded(idx, end_first=False)
    positions = np.flatnonzero(tgt_out != PAD)
    return Batch(src=source, src_lengths=src_lengths,
                 tgt_in=torch.from_numpy(tgt.padded(idx, end_first=True)),
                 tgt_out=torch.from_numpy(tgt_out), positions=torch.from_numpy(positions),
                 n_tokens=len(positions))


def length_batches(sizes: list[int], batch_size: int) -> list[list[int]]:
    """Positions of ``sizes`` sorted by size (stable), cut into batches of ``batch_size``."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def by_length(sizes: list[int], batch_size: int, work: Callable[[list[int]], Iterable[T]]
              ) -> list[T]:
    """``work`` (one result per position given) on ``length_batches``, results in input order."""
    results: list = [None] * len(sizes)
    for index in length_batches(sizes, batch_size):
        for position, result in zip(index, work(index)):
            results[position] = result
    return results


def epoch_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, batch_size: int, unit: str,
                  seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches (arrays of example indices): examples sorted by length (ties at
    random), cut where one more would put a batch over ``batch_size`` (sentences, or sentences x
    its longest side + 1 in tokens), batches shuffled. Only (seed, epoch) decide: a resumed run
    sees the batches it would have seen."""
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(src_lens)), tgt_lens, src_lens))
    longest = with_end_marker(np.maximum(src_lens, tgt_lens)[order].astype(np.int64))
    starts = []
    start = 0
    while True:
        starts.append(start)
        # No batch holds more: even at its first example's length it would be over.
        fits = batch_size // longest[start] + 1 if unit == "tokens" else batch_size + 1
        window = longest[start:start + max(fits, 2)]
        counts = np.arange(1, len(window) + 1)
        size = counts * np.maximum.accumulate(window) if unit == "tokens" else counts
        over = np.flatnonzero(size[1:] > batch_size)  # a batch always takes its first example
        if not len(over):
            break  # the window reached the end of the epoch
        start += int(over[0]) + 1
    batches = np.split(order, starts[1:])
    perm = rng.permutation(len(batches))
    return [batches[j] for j in perm]
