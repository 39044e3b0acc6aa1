"""A run's training corpus, prepared once and memory-mapped ever after.

Preparing streams the corpus in chunks (never read whole): sentencepiece trains on
a sample of it (``data.spm_sample_sentences``), then each chunk is encoded on all
cores, length-filtered with array operations and appended to flat arrays in
``<data.cache_dir or run dir/cache>/corpus-<fingerprint>/``: per side (src, tgt)
``ids`` (uint16 below 65,536 pieces, else int32), ``offsets`` (int64) and
``lengths`` (int32), described by ``meta.json``. The fingerprint hashes all that
produced it: the files' content (nmt.data.file_identity), the sentencepiece
model(s), ``data.max_len``, ``data.max_len_ratio``, the sentencepiece version and
FORMAT; anything that changed gets a folder of its own. A folder is written under a
temporary name and renamed when complete, so an interrupted preparation leaves
nothing that could be taken for a finished one. ``vocab-<fingerprint>/`` keeps the
sentencepiece model(s) trained on the same data and settings for other runs.
Under torchrun rank 0 prepares and the others map the same files (the page cache
holds one copy for all the processes of a machine).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from hashlib import sha256
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import sentencepiece
from tqdm import tqdm

from nmt.rundir import RunDir
from nmt.config import Config, DataConfig, Direction
from nmt.data import CHUNK, Batch, DatasetPairs, Pieces, TextPairs, batch_of, epoch_batches, length_filter, \
    load_split, pair_source, with_end_marker
from nmt.directions import control_symbols, directions, entries, label, side_config, source_tags
from nmt.errors import ConfigError, DataError, NmtError
from nmt.io import describe_os_error, write_bytes
from nmt.vocab import Vocab, train_vocab, vocab_paths

log = logging.getLogger("nmt")

FORMAT = 1  # of the prepared folder; a new layout gets a new number (and new folders)
SIDES = ("src", "tgt")
SAMPLE_SEED = 0  # fixed, not train.seed: runs of other seeds get the same vocabulary (ensembles need it)


def _key(*parts) -> str:
    return sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _progress(what: str, total: int) -> tqdm:
    return tqdm(total=total, desc=what, unit=" lines", unit_scale=True, dynamic_ncols=True,
                mininterval=1.0, disable=None)


def on_rank0(work: Callable[[], object], rank: int, world: int):
    """``work()`` run by rank 0 alone; every rank gets its result, or its error.

    The others wait in a gloo group of its own with a long timeout: preparing a large
    corpus can outlast the training group's (NCCL's is 10 minutes)."""
    if world == 1:
        return work()
    import torch.distributed as dist
    group = dist.new_group(backend="gloo", timeout=timedelta(hours=12))
    tell = lambda box: dist.broadcast_object_list(box, src=0, group=group)  # noqa: E731
    if rank == 0:
        try:
            value = work()
        except BaseException as err:  # the others get its message; rank 0 raises it as it was
            tell([("error", str(err) if isinstance(err, NmtError) else
                   "rank 0 failed while preparing the training data (see its error)")])
            raise
        tell([("ok", value)])
        return value
    box: list = [None]
    tell(box)
    status, value = box[0]
    if status == "error":
        raise NmtError(value)
    return value


def _sample(source: TextPairs | DatasetPairs, sides: tuple[int, ...], pairs: int, limit: int
            ) -> Iterator[str]:
    """The sentences of ``sides`` one after the other (source, then target), or, when they
    hold more than ``limit``, ``limit`` of them drawn at random (a fixed seed: the same data
    gives the same sample), still in corpus order."""
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
    """The run's sentencepiece model(s): copied from the cache, or trained on a sample of the
    corpus (and kept in the cache for other runs)."""
    paths = list(dict.fromkeys(vocab_paths(run_dir, data.joint_vocab)))  # one, or source and target
    n = identity["pairs"]
    limit = data.spm_sample_sentences
    sample = limit if limit and limit < n * (2 if data.joint_vocab else 1) else "all"
    tags = control_symbols(data)
    folder = cache / ("vocab-" + _key(identity, data.vocab_size, data.subword_type, data.joint_vocab,
                                      sample, FORMAT, *([tags] if tags else [])))
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
        log.info(f"vocabulary {path.name}: training sentencepiece on {min(total, limit or total):,} "
                 f"of {total:,} sentences")
        _train_on_sample(_sample(source, which, n, limit), path, data, source.where, tags if 0 in which else [])
        log.info(f"vocabulary {path.name}: trained in {time.perf_counter() - start:.1f} s")
    try:  # for other runs on the same data; this run does not need it
        with _building(folder) as tmp:
            for path in paths:
                shutil.copyfile(path, tmp / path.name)
    except OSError as err:
        log.warning(f"the vocabulary could not be kept in {cache} for other runs: {describe_os_error(err)}")


@contextmanager
def _building(folder: Path) -> Iterator[Path]:
    """A temporary folder that becomes ``folder`` when the block ends without error, and is
    removed otherwise. If another process completed ``folder`` first, its copy is kept."""
    tmp = folder.parent / f".{folder.name}.{socket.gethostname()}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.iterdir():  # on disk before the rename makes the folder complete
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        directory = os.open(folder.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself on disk
        finally:
            os.close(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sweep(cache: Path) -> None:
    """Remove the temporary folders of preparations on this machine whose process is gone
    (killed: an error or a signal removes its own)."""
    for stale in cache.glob(f".*.{socket.gethostname()}-*.tmp"):
        pid = stale.name.rsplit("-", 1)[1][:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists, as another user's process
    return True


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


def _segmentations(vocabs: tuple[Vocab, Vocab], chunk: tuple[list[str], list[str]], data: DataConfig,
                   seed: tuple[int, int], threads: int) -> list[list[list[int]]]:
    """Per side, the pieces of the chunk's sentences: one segmentation each, or with
    data.subword_sampling that many sampled ones, pair after pair (row pair x K + k)."""
    if not data.subword_sampling:
        return [vocab.encode(lines, threads) for vocab, lines in zip(vocabs, chunk)]
    k = data.subword_segmentations
    sides = []
    for side, (vocab, lines) in enumerate(zip(vocabs, chunk)):  # seeded by entry, chunk, side, copy
        copies = [vocab.sample(lines, data.subword_sampling, int(_key(*seed, side, j), 16) % 2**31)
                  for j in range(k)]
        sides.append([copy[i] for i in range(len(lines)) for copy in copies])
    return sides


def _write(tmp: Path, sources: list, tags: list[list[int]], identity: dict, vocabs: tuple[Vocab, Vocab],
           data: DataConfig) -> dict:
    """Encode, filter and write the corpus into ``tmp`` (the entries' sources one after the other,
    each source sentence after its ``tags``); its meta.json record."""
    start = time.perf_counter()
    pairs = identity["pairs"]
    copies = data.subword_segmentations if data.subword_sampling else 1
    dtypes = [np.dtype("<u2") if len(v) < 65536 else np.dtype("<i4") for v in vocabs]
    counts = dict.fromkeys(("kept", "empty", "too_long", "bad_ratio"), 0)
    lengths: tuple[list, list] = ([], [])
    # The cores this process may use (sentencepiece's default counts the machine's).
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else -1
    read = 0
    where = ", ".join(dict.fromkeys(source.where for source in sources))
    log.info(f"preparing the training data: {pairs:,} pairs from {where} into {tmp.parent}"
             + (f" ({copies} sampled segmentations each)" if copies > 1 else ""))
    with _progress("preparing", pairs) as bar, open(tmp / "src.ids", "wb") as src_ids, \
            open(tmp / "tgt.ids", "wb") as tgt_ids:
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
                for side, out in enumerate((src_ids, tgt_ids)):
                    kept = itertools.chain.from_iterable(itertools.compress(ids[side], keep))
                    out.write(np.fromiter(kept, dtype=dtypes[side], count=int(lens[side][keep].sum())).tobytes())
                    lengths[side].append(lens[side][keep])
                read += len(chunk[0])
                bar.update(len(chunk[0]))
            source.check_unchanged()
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


def prepare(data: DataConfig, run_dir: Path, reuse_vocab: bool) -> Path:
    """The prepared folder of the run's training data, made now unless it exists; the run's
    sentencepiece model(s) in ``run_dir`` (trained, or copied from the cache, unless
    ``reuse_vocab``)."""
    cache = Path(data.cache_dir) if data.cache_dir else RunDir(run_dir).cache
    chosen = entries(data)
    sources = [pair_source(side_config(data, entry), entry.train) for entry in chosen]
    source = _Entries(sources) if data.directions else sources[0]
    identity = source.identity()
    if not identity["pairs"]:
        raise DataError(f"{source.where}: the training corpus is empty")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _sweep(cache)
        if not reuse_vocab:
            _vocabularies(data, source, identity, cache, run_dir)
        vocabs = tuple(Vocab(p) for p in vocab_paths(run_dir, data.joint_vocab))
        tags = [vocabs[0].tag_ids(source_tags(data, entry, training=True)) for entry in chosen]
        sampling = [data.subword_sampling, data.subword_segmentations] if data.subword_sampling else []
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
        with _terminate_as_interrupt(), _building(folder) as tmp:  # its fsyncs and rename too
            _write(tmp, sources, tags, identity, vocabs, data)
        return folder
    except OSError as err:  # the disk filled, or the cache folder cannot be written
        raise NmtError(f"preparing the training data in {cache}: {describe_os_error(err)} "
                       "(data.cache_dir chooses where it goes)") from None


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (what a batch scheduler sends) stops a preparation as Ctrl-C does, so that its
    temporary folder is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _mapped(folder: Path) -> tuple[Pieces, Pieces, dict]:
    """The two sides of a prepared folder as memory-mapped arrays (read-only)."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    n = meta["pairs"] * meta.get("segmentations", 1)  # pair p's segmentation k is sentence p x K + k
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
    vocabularies (trained on the training side, or read back from the run directory on
    --resume)."""

    def __init__(self, cfg: Config, run_dir: Path, reuse_vocab: bool, rank: int = 0, world: int = 1):
        data = cfg.data
        self.folder = on_rank0(lambda: prepare(data, run_dir, reuse_vocab), rank, world)
        self.src_vocab, self.tgt_vocab = (Vocab(p) for p in vocab_paths(run_dir, data.joint_vocab))
        self.src, self.tgt, meta = _mapped(self.folder)
        self.fingerprint = self.folder.name
        counts = self.filter_counts = meta["filter"]
        log.info(f"training pairs: {meta['read']:,} read, {counts['kept']:,} kept, dropped "
                 f"{counts['empty']:,} empty, {counts['too_long']:,} longer than {data.max_len} pieces, "
                 f"{counts['bad_ratio']:,} with length ratio over {data.max_len_ratio}")
        log.info(f"vocabulary: {len(self.src_vocab)} source, {len(self.tgt_vocab)} target pieces")
        self.segmentations = meta.get("segmentations", 1)  # 1: made before sampling existed
        self.valid_sets = [ValidSet.of(data, d, self.src_vocab, self.tgt_vocab) for d in directions(data)
                           if d.valid]

    def batch(self, idx: np.ndarray) -> Batch:
        """The training batch of sentences ``idx`` (rows of ``epoch``'s batches)."""
        return batch_of(self.src, self.tgt, idx)

    def target_tokens(self, batches: list[np.ndarray]) -> int:
        """Real target tokens (end markers included) of ``batches``, counted on the host."""
        idx = np.concatenate(batches)
        return int(with_end_marker(self.tgt.lengths[idx].astype(np.int64)).sum())

    def epoch(self, batch_size: int, unit: str, seed: int, epoch: int) -> list[np.ndarray]:
        """The epoch's batches as arrays of rows: of pairs, or with sampled segmentations of the
        segmentation each pair takes this epoch (drawn from the seed and the epoch)."""
        k = self.segmentations
        if k == 1:
            return epoch_batches(self.src.lengths, self.tgt.lengths, batch_size, unit, seed, epoch)
        pairs = len(self.src.lengths) // k
        rows = np.arange(pairs) * k + np.random.default_rng([seed, epoch, k]).integers(k, size=pairs)
        batches = epoch_batches(self.src.lengths[rows], self.tgt.lengths[rows], batch_size, unit, seed, epoch)
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
    def of(cls, data: DataConfig, direction: Direction, src_vocab: Vocab, tgt_vocab: Vocab) -> "ValidSet":
        src_text, ref = load_split(side_config(data, direction), direction.valid, "validation")
        tags = src_vocab.tag_ids(source_tags(data, direction, training=False))
        return cls(label(direction), src_text, ref, [tags + ids for ids in src_vocab.encode(src_text)],
                   tgt_vocab.encode(ref))
