"""A run's training corpus, prepared once and memory-mapped ever after.

Sentencepiece trains on a sample (``data.spm_sample_sentences``); then chunk by chunk the corpus
is encoded on all cores, length-filtered and appended to ``<data.cache_dir or run dir/cache>/
corpus-<fingerprint>/``: per side (src, tgt) ``ids`` (uint16 below 65,536 pieces, else int32),
``offsets`` (int64), ``lengths`` (int32), and ``meta.json``. The fingerprint hashes all that made
it; a folder is written whole or not at all (``nmt.io.building_folder``). ``vocab-<fingerprint>/``
keeps the sentencepiece model(s) for other runs. Under torchrun rank 0 prepares, the others map.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Iterator

import numpy as np
import sentencepiece
from tqdm import tqdm

from nmt import collectives
from nmt.config import Config, DataConfig, Direction
from nmt.data import (CHUNK, Batch, DatasetPairs, Pieces, TextPairs, batch_of, epoch_batches,
                      length_filter, load_split, pair_source, with_end_marker)
from nmt.directions import control_symbols, directions, entries, label, side_config, source_tags
from nmt.errors import ConfigError, DataError, NmtError
from nmt.io import (building_folder, describe_os_error, sweep_stale_folders, terminate_as_interrupt,
                    write_bytes)
from nmt.rundir import RunDir
from nmt.vocab import Vocab, train_vocab, vocab_paths

log = logging.getLogger("nmt")

FORMAT = 1  # of the prepared folder; a new layout gets a new number (and new folders)
SIDES = ("src", "tgt")
# Fixed, not train.seed: runs of other seeds get the same vocabulary (ensembles need it).
SAMPLE_SEED = 0


def _key(*parts) -> str:
    return sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _progress(what: str, total: int) -> tqdm:
    return tqdm(total=total, desc=what, unit=" lines", unit_scale=True, dynamic_ncols=True,
                mininterval=1.0, disable=None)


def _sample(source: TextPairs | DatasetPairs, sides: tuple[int, ...], pairs: int, limit: int
            ) -> Iterator[str]:
    """The sentences of ``sides`` (source, then target); over ``limit`` of them, ``limit`` drawn
    with a fixed seed (the same data gives the same sample), still in corpus order."""
    total = pairs * len(sides)
    chosen = None
    if limit and total > limit:
        chosen = np.zeros(total, dtype=bool)
        chosen[np.random.default_rng(SAMPLE_SEED).choice(total, size=limit, replace=False)] = True
    position = 0
    with _progress("sentencepiece sample", total) as bar:
        for side in sides:
            for chunk in source.side(side):
                yield from chunk if chosen is None else \
                    itertools.compress(chunk, chosen[position:position + len(chunk)])
                position += len(chunk)
                bar.update(len(chunk))


def _train_on_sample(sentences: Iterator[str], path: Path, data: DataConfig, where: str,
                     tags: list[str]) -> None:
    """train_vocab on ``sentences``. sentencepiece turns an error raised while it reads them
    (bad UTF-8 in the corpus) into its own RuntimeError: keep it, and raise it as it was."""
    seen = {"error": None, "text": False}

    def reading() -> Iterator[str]:
        try:
            for sentence in sentences:
                seen["text"] = seen["text"] or bool(sentence.strip())
                yield sentence
        except NmtError as err:
            seen["error"] = err

    try:
        train_vocab(reading(), path, data.vocab_size, data.subword_type, tags)
    except ConfigError:
        if seen["error"] is None and seen["text"]:
            raise
    if seen["error"] is not None:
        raise seen["error"]
    if not seen["text"]:
        raise DataError(f"{where}: the training corpus holds no text (only empty lines)")


def _vocabularies(data: DataConfig, source, identity: dict, cache: Path, run_dir: Path) -> None:
    """The run's sentencepiece model(s): from the cache, or trained on a sample (and cached)."""
    paths = list(dict.fromkeys(vocab_paths(run_dir, data.joint_vocab)))  # one, or source and target
    n = identity["pairs"]
    limit = data.spm_sample_sentences
    sample = limit if limit and limit < n * (2 if data.joint_vocab else 1) else "all"
    tags = control_symbols(data)
    folder = cache / ("vocab-" + _key(identity, data.vocab_size, data.subword_type,
                                      data.joint_vocab, sample, FORMAT, *([tags] if tags else [])))
    if all((folder / p.name).is_file() for p in paths):
        for path in paths:
            write_bytes(path, (folder / path.name).read_bytes())
        log.info(f"vocabulary: copied from {folder}")
        return
    if not os.access(cache, os.W_OK):
        raise NmtError(f"{cache}: cannot be written, and holds no preparation of this data "
                       "(choose another data.cache_dir)")
    sides = [(paths[0], (0, 1))] if data.joint_vocab else list(zip(paths, ((0,), (1,))))
    for path, which in sides:
        start = time.perf_counter()
        total = n * len(which)
        log.info(f"vocabulary {path.name}: training sentencepiece on "
                 f"{min(total, limit or total):,} of {total:,} sentences")
        _train_on_sample(_sample(source, which, n, limit), path, data, source.where,
                         tags if 0 in which else [])
        log.info(f"vocabulary {path.name}: trained in {time.perf_counter() - start:.1f} s")
    try:  # for other runs on the same data; this run does not need it
        with building_folder(folder) as tmp:
            for path in paths:
                shutil.copyfile(path, tmp / path.name)
    except OSError as err:
        log.warning(f"the vocabulary could not be kept in {cache} for other runs: "
                    f"{describe_os_error(err)}")


class _Entries:
    """The pair sources of ``data.directions``' entries read one after the other, as one."""

    def __init__(self, sources: list):
        self.sources = sources
        self.where = ", ".join(dict.fromkeys(source.where for source in sources))

    def identity(self) -> dict:
        identities = [source.identity() for source in self.sources]
        return {"entries": identities, "pairs": sum(i["pairs"] for i in identities)}

    def side(self, which: int, size: int = CHUNK) -> Iterator[list[str]]:
        for source in self.sources:
            yield from source.side(which, size)

    def check_unchanged(self) -> None:
        for source in self.sources:
            source.check_unchanged()


def _segmentations(vocabs: tuple[Vocab, Vocab], chunk: tuple[list[str], list[str]],
                   data: DataConfig, seed: tuple[int, int], threads: int) -> list[list[list[int]]]:
    """Per side, the chunk's pieces: one segmentation each, or with data.subword_sampling
    that many sampled ones, pair after pair (row pair x K + k)."""
    if not data.subword_sampling:
        return [vocab.encode(lines, threads) for vocab, lines in zip(vocabs, chunk)]
    k = data.subword_segmentations
    sides = []
    for side, (vocab, lines) in enumerate(zip(vocabs, chunk)):  # seeded by entry, chunk, side, copy
        copies = [vocab.sample(lines, data.subword_sampling, int(_key(*seed, side, j), 16) % 2**31)
                  for j in range(k)]
        sides.append([copy[i] for i in range(len(lines)) for copy in copies])
    return sides


def _write(tmp: Path, sources: list, tags: list[list[int]], identity: dict,
           vocabs: tuple[Vocab, Vocab], data: DataConfig) -> dict:
    """Encode, filter and write the sources into ``tmp``; returns its meta.json record."""
    start = time.perf_counter()
    pairs = identity["pairs"]
    copies = data.subword_segmentations if data.subword_sampling else 1
    dtypes = [np.dtype("<u2") if len(v) < 65536 else np.dtype("<i4") for v in vocabs]
    counts = dict.fromkeys(("kept", "empty", "too_long", "bad_ratio"), 0)
    lengths: tuple[list, list] = ([], [])
    where = ", ".join(dict.fromkeys(source.where for source in sources))
    log.info(f"preparing the training data: {pairs:,} pairs from {where} into {tmp.parent}"
             + (f" ({copies} sampled segmentations each)" if copies > 1 else ""))
    with _progress("preparing", pairs) as bar, open(tmp / "src.ids", "wb") as src_ids, \
            open(tmp / "tgt.ids", "wb") as tgt_ids:
        read = _encode(sources, tags, vocabs, data, (src_ids, tgt_ids), dtypes, counts, lengths,
                       bar)
    if read != pairs:
        raise DataError(f"{where}: changed while it was read; run again")
    if not counts["kept"]:
        raise DataError(f"{where}: no training pair left after length filtering")
    meta = {"format": FORMAT, "pairs": counts["kept"], "segmentations": copies, "filter": counts,
            "read": read, "from": where, "prepared": time.strftime("%Y-%m-%d %H:%M:%S"),
            "identity": identity}
    for side, dtype, parts in zip(SIDES, dtypes, lengths):
        side_lengths = np.concatenate(parts)
        offsets = np.zeros(len(side_lengths), dtype="<i8")
        np.cumsum(side_lengths[:-1], dtype=np.int64, out=offsets[1:])
        side_lengths.astype("<i4").tofile(tmp / f"{side}.lengths")
        offsets.tofile(tmp / f"{side}.offsets")
        meta[side] = {"dtype": dtype.str, "pieces": int(side_lengths.sum())}
    seconds = time.perf_counter() - start
    meta["seconds"] = round(seconds, 1)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    size = sum(p.stat().st_size for p in tmp.iterdir())
    log.info(f"prepared {read:,} pairs ({counts['kept']:,} kept) in {seconds:.1f} s "
             f"({read / seconds:,.0f} pairs/s); {size / 2**20:,.1f} MiB on disk")
    return meta


def _encode(sources: list, tags: list[list[int]], vocabs: tuple[Vocab, Vocab], data: DataConfig,
            outs: tuple, dtypes: list, counts: dict, lengths: tuple[list, list], bar: tqdm) -> int:
    """Append each kept pair's pieces to ``outs`` and lengths to ``lengths``, count what the
    filter dropped in ``counts``; returns the pairs read."""
    copies = data.subword_segmentations if data.subword_sampling else 1
    # The cores this process may use (sentencepiece's default counts the machine's).
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else -1
    read = 0
    for entry, (source, tag) in enumerate(zip(sources, tags)):
        for n, chunk in enumerate(zip(source.side(0), source.side(1))):
            if len(chunk[0]) != len(chunk[1]):
                source.check_unchanged()  # names the file
                raise DataError(f"{source.where}: changed while it was read; run again")
            ids = _segmentations(vocabs, chunk, data, (entry, n), threads)
            ids[0] = [tag + x for x in ids[0]] if tag else ids[0]
            lens = [np.fromiter(map(len, x), dtype=np.int32, count=len(x)) for x in ids]
            # A pair is kept when each of its segmentations passes: filtered on the longest
            longest = [side.reshape(-1, copies).max(1) for side in lens]
            keep, dropped = length_filter(*longest, data.max_len, data.max_len_ratio)
            for key, value in dropped.items():
                counts[key] += value
            keep = np.repeat(keep, copies)
            for side, out in enumerate(outs):
                kept = itertools.chain.from_iterable(itertools.compress(ids[side], keep))
                count = int(lens[side][keep].sum())
                out.write(np.fromiter(kept, dtype=dtypes[side], count=count).tobytes())
                lengths[side].append(lens[side][keep])
            read += len(chunk[0])
            bar.update(len(chunk[0]))
        source.check_unchanged()
    return read


def prepare(data: DataConfig, run_dir: Path, reuse_vocab: bool) -> Path:
    """The prepared training data's folder, made unless it exists (vocabularies unless reused)."""
    cache = Path(data.cache_dir) if data.cache_dir else RunDir(run_dir).cache
    chosen = entries(data)
    sources = [pair_source(side_config(data, entry), entry.train) for entry in chosen]
    source = _Entries(sources) if data.directions else sources[0]
    identity = source.identity()
    if not identity["pairs"]:
        raise DataError(f"{source.where}: the training corpus is empty")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        sweep_stale_folders(cache)
        if not reuse_vocab:
            _vocabularies(data, source, identity, cache, run_dir)
        vocabs = tuple(Vocab(p) for p in vocab_paths(run_dir, data.joint_vocab))
        tags = [vocabs[0].tag_ids(source_tags(data, entry, training=True)) for entry in chosen]
        sampling = [data.subword_sampling, data.subword_segmentations] \
            if data.subword_sampling else []
        folder = cache / ("corpus-" + _key(identity, [v.fingerprint for v in vocabs], data.max_len,
                                           data.max_len_ratio, sentencepiece.__version__, FORMAT,
                                           *([tags] if data.directions else []), *sampling))
        if folder.is_dir() and not (folder / "meta.json").is_file():  # only a rename makes it
            raise DataError(f"{folder}: incomplete (no meta.json): not made by nmt, or damaged; "
                            "delete it to prepare the data again")
        if folder.is_dir():
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            log.info(f"training data: mapped {folder} ({meta['pairs']:,} pairs prepared from "
                     f"{meta['from']} on {meta['prepared']}, in {meta['seconds']:.0f} s)")
            return folder
        with terminate_as_interrupt(), building_folder(folder) as tmp:
            _write(tmp, sources, tags, identity, vocabs, data)
        return folder
    except OSError as err:  # the disk filled, or the cache folder cannot be written
        raise NmtError(f"preparing the training data in {cache}: {describe_os_error(err)} "
                       "(data.cache_dir chooses where it goes)") from None


def _mapped(folder: Path) -> tuple[Pieces, Pieces, dict]:
    """The two sides of a prepared folder as memory-mapped arrays (read-only)."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    n = meta["pairs"] * meta.get("segmentations", 1)  # pair p's segmentation k: sentence p x K + k
    sides = []
    for side in SIDES:
        shapes = {"ids": (meta[side]["dtype"], meta[side]["pieces"]), "offsets": ("<i8", n),
                  "lengths": ("<i4", n)}
        arrays = {}
        for name, (dtype, count) in shapes.items():
            path = folder / f"{side}.{name}"
            if not path.is_file() or path.stat().st_size != np.dtype(dtype).itemsize * count:
                raise DataError(f"{path}: damaged (its size differs from {folder / 'meta.json'}); "
                                f"delete {folder} to prepare the data again")
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
        sides.append(Pieces(arrays["ids"], arrays["offsets"], arrays["lengths"]))
    return sides[0], sides[1], meta


class Corpus:
    """A run's training data (prepared and memory-mapped), its validation data and its
    vocabularies (trained on the training side, or the run directory's on --resume)."""

    def __init__(self, cfg: Config, run_dir: Path, reuse_vocab: bool, rank: int = 0,
                 world: int = 1):
        data = cfg.data
        self.folder = collectives.on_rank0(lambda: prepare(data, run_dir, reuse_vocab), rank, world)
        self.src_vocab, self.tgt_vocab = (Vocab(p) for p in vocab_paths(run_dir, data.joint_vocab))
        self.src, self.tgt, meta = _mapped(self.folder)
        self.fingerprint = self.folder.name
        counts = self.filter_counts = meta["filter"]
        log.info(f"training pairs: {meta['read']:,} read, {counts['kept']:,} kept, dropped "
                 f"{counts['empty']:,} empty, {counts['too_long']:,} longer than "
                 f"{data.max_len} pieces, {counts['bad_ratio']:,} with length ratio over "
                 f"{data.max_len_ratio}")
        log.info(f"vocabulary: {len(self.src_vocab)} source, {len(self.tgt_vocab)} target pieces")
        self.segmentations = meta.get("segmentations", 1)  # 1: made before sampling existed
        self.valid_sets = [ValidSet.of(data, d, self.src_vocab, self.tgt_vocab)
                           for d in directions(data) if d.valid]

    def batch(self, idx: np.ndarray) -> Batch:
        """The training batch of sentences ``idx`` (rows of ``epoch``'s batches)."""
        return batch_of(self.src, self.tgt, idx)

    def target_tokens(self, batches: list[np.ndarray]) -> int:
        """Real target tokens (end markers included) of ``batches``, counted on the host."""
        idx = np.concatenate(batches)
        return int(with_end_marker(self.tgt.lengths[idx].astype(np.int64)).sum())

    def epoch(self, batch_size: int, unit: str, seed: int, epoch: int) -> list[np.ndarray]:
        """The epoch's batches of rows (with sampled segmentations, each pair's draw this epoch)."""
        k = self.segmentations
        if k == 1:
            return epoch_batches(self.src.lengths, self.tgt.lengths, batch_size, unit, seed, epoch)
        pairs = len(self.src.lengths) // k
        chosen = np.random.default_rng([seed, epoch, k]).integers(k, size=pairs)
        rows = np.arange(pairs) * k + chosen
        batches = epoch_batches(self.src.lengths[rows], self.tgt.lengths[rows], batch_size, unit,
                                seed, epoch)
        return [rows[b] for b in batches]


@dataclass
class ValidSet:
    """One direction's validation set: raw text and pieces (its source after its tags)."""
    name: str  # the direction, src-tgt
    src_text: list[str]
    ref: list[str]
    src: list[list[int]]
    tgt: list[list[int]]

    @classmethod
    def of(cls, data: DataConfig, direction: Direction, src_vocab: Vocab, tgt_vocab: Vocab
           ) -> "ValidSet":
        src_text, ref = load_split(side_config(data, direction), direction.valid, "validation")
        tags = src_vocab.tag_ids(source_tags(data, direction, training=False))
        return cls(label(direction), src_text, ref,
                   [tags + ids for ids in src_vocab.encode(src_text)], tgt_vocab.encode(ref))
