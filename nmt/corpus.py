"""A run's training corpus, prepared once and memory-mapped ever after.

Preparing streams the corpus in chunks (it is never read whole): sentencepiece
trains on a random sample of it (``data.spm_sample_sentences``), then each chunk
is encoded (sentencepiece's batch encoding, on all cores), length-filtered with
array operations and appended to flat arrays on disk. The result is a folder

    <data.cache_dir or run dir/cache>/corpus-<fingerprint>/
        src.ids tgt.ids          piece ids: uint16 below 65,536 pieces, else int32
        src.offsets tgt.offsets  int64: where each sentence starts in its ids
        src.lengths tgt.lengths  int32: its length in pieces
        meta.json                counts, dtypes, where it came from, the filter's counts

whose name is a hash of everything that produced it: the content of the
files (nmt.data.file_identity: a full sha256), the sentencepiece model(s),
``data.max_len``, ``data.max_len_ratio``, the sentencepiece version and FORMAT.
A run, a resume or another run on the same data and settings maps the folder
and starts in seconds; anything that changed gets a folder of its own. The
folder is written under a temporary name and renamed when complete, so an
interrupted preparation leaves nothing that could be taken for a finished one.
``vocab-<fingerprint>/`` beside it keeps the sentencepiece model(s) trained on
the same data and vocabulary settings, so another run need not train them again.

Under torchrun rank 0 prepares; the other ranks wait, then map the same files
(the page cache holds one copy for all the processes of a machine).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager
from datetime import timedelta
from hashlib import sha256
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import sentencepiece
from tqdm import tqdm

from nmt.config import Config, DataConfig
from nmt.data import Batch, DatasetPairs, Pieces, TextPairs, batch_of, epoch_batches, length_filter, \
    load_split, pair_source
from nmt.errors import DataError, NmtError
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
    box: list = [None]
    try:
        if rank == 0:
            box = [("ok", work())]
    except NmtError as err:
        box = [("error", str(err))]
    except BaseException:
        box = [("error", "rank 0 failed while preparing the training data (see its error)")]
        dist.broadcast_object_list(box, src=0, group=group)
        raise
    dist.broadcast_object_list(box, src=0, group=group)
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


def _vocabularies(data: DataConfig, source, identity: dict, cache: Path, run_dir: Path) -> None:
    """The run's sentencepiece model(s): copied from the cache, or trained on a sample of the
    corpus (and kept in the cache for other runs)."""
    paths = sorted(set(vocab_paths(run_dir, data.joint_vocab)))
    folder = cache / ("vocab-" + _key(identity, data.vocab_size, data.subword_type, data.joint_vocab,
                                      data.spm_sample_sentences, FORMAT))
    if all((folder / p.name).is_file() for p in paths):
        for path in paths:
            write_bytes(path, (folder / path.name).read_bytes())
        log.info(f"vocabulary: copied from {folder}")
        return
    n, limit = identity["pairs"], data.spm_sample_sentences
    sides = [(paths[0], (0, 1))] if data.joint_vocab else list(zip(paths, ((0,), (1,))))
    for path, which in sides:
        start, total = time.perf_counter(), n * len(which)
        train_vocab(_sample(source, which, n, limit), path, data.vocab_size, data.subword_type)
        log.info(f"vocabulary {path.name}: trained in {time.perf_counter() - start:.1f} s on "
                 f"{min(total, limit or total):,} of {total:,} sentences")
    with _building(folder) as tmp:
        for path in paths:
            shutil.copyfile(path, tmp / path.name)


@contextmanager
def _building(folder: Path) -> Iterator[Path]:
    """A temporary folder that becomes ``folder`` when the block ends without error, and is
    removed otherwise. If another process completed ``folder`` first, its copy is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for stale in folder.parent.glob(f".*.{host}-*.tmp"):  # left by a process that was killed
        pid = stale.name.rsplit("-", 1)[1][:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.parent / f".{folder.name}.{host}-{os.getpid()}.tmp"
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(tmp: Path, source, identity: dict, vocabs: tuple[Vocab, Vocab], data: DataConfig) -> dict:
    """Encode, filter and write the corpus into ``tmp``; its meta.json record."""
    start, pairs = time.perf_counter(), identity["pairs"]
    dtypes = [np.dtype("<u2") if len(v) < 65536 else np.dtype("<i4") for v in vocabs]
    counts = dict.fromkeys(("kept", "empty", "too_long", "bad_ratio"), 0)
    lengths: tuple[list, list] = ([], [])
    # The cores this process may use (sentencepiece's default counts the machine's).
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else -1
    read = 0
    log.info(f"preparing the training data: {pairs:,} pairs from {source.where} into {tmp.parent}")
    with _progress("preparing", pairs) as bar, open(tmp / "src.ids", "wb") as src_ids, \
            open(tmp / "tgt.ids", "wb") as tgt_ids:
        for chunk in zip(source.side(0), source.side(1)):
            if len(chunk[0]) != len(chunk[1]):
                source.check_unchanged()  # names the file
                raise DataError(f"{source.where}: changed while it was read; run again")
            ids = [vocab.encode(lines, threads) for vocab, lines in zip(vocabs, chunk)]
            lens = [np.fromiter(map(len, x), dtype=np.int32, count=len(x)) for x in ids]
            keep, dropped = length_filter(*lens, data.max_len, data.max_len_ratio)
            for key, value in dropped.items():
                counts[key] += value
            for side, out in enumerate((src_ids, tgt_ids)):
                kept = itertools.chain.from_iterable(itertools.compress(ids[side], keep))
                out.write(np.fromiter(kept, dtype=dtypes[side], count=int(lens[side][keep].sum())).tobytes())
                lengths[side].append(lens[side][keep])
            read += len(chunk[0])
            bar.update(len(chunk[0]))
    source.check_unchanged()
    if read != pairs:
        raise DataError(f"{source.where}: changed while it was read; run again")
    if not counts["kept"]:
        raise DataError(f"{source.where}: no training pair left after length filtering")
    meta = {"format": FORMAT, "pairs": counts["kept"], "filter": counts, "read": read,
            "from": source.where,
            "prepared": time.strftime("%Y-%m-%d %H:%M:%S"), "identity": identity}
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
    log.info(f"prepared {read:,} pairs in {seconds:.1f} s ({read / seconds:,.0f} pairs/s); "
             f"{size / 2**20:,.1f} MiB on disk")
    return meta


def prepare(data: DataConfig, run_dir: Path, reuse_vocab: bool) -> Path:
    """The prepared folder of the run's training data, made now unless it exists; the run's
    sentencepiece model(s) in ``run_dir`` (trained, or copied from the cache, unless
    ``reuse_vocab``)."""
    cache = Path(data.cache_dir) if data.cache_dir else run_dir / "cache"
    source = pair_source(data, data.train)
    identity = source.identity()
    if not identity["pairs"]:
        raise DataError(f"{source.where}: the training corpus is empty")
    try:
        if not reuse_vocab:
            _vocabularies(data, source, identity, cache, run_dir)
        vocabs = tuple(Vocab(p) for p in vocab_paths(run_dir, data.joint_vocab))
        folder = cache / ("corpus-" + _key(identity, [v.fingerprint for v in vocabs], data.max_len,
                                           data.max_len_ratio, sentencepiece.__version__, FORMAT))
        if (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            log.info(f"training data: mapped {folder} ({meta['pairs']:,} pairs prepared from "
                     f"{meta['from']} on {meta['prepared']}, in {meta['seconds']:.0f} s)")
            return folder
        with _building(folder) as tmp:
            _write(tmp, source, identity, vocabs, data)
        return folder
    except OSError as err:  # the disk filled, or the cache folder cannot be written
        raise NmtError(f"preparing the training data in {cache}: {describe_os_error(err)} "
                       "(data.cache_dir can put it on another disk)") from None


def _mapped(folder: Path) -> tuple[Pieces, Pieces, dict]:
    """The two sides of a prepared folder as memory-mapped arrays (read-only)."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    n, sides = meta["pairs"], []
    for side in SIDES:
        shapes = {"ids": (meta[side]["dtype"], meta[side]["pieces"]), "offsets": ("<i8", n), "lengths": ("<i4", n)}
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
        log.info(f"training pairs: {meta['read']} read, {counts['kept']} kept, dropped "
                 f"{counts['empty']} empty, {counts['too_long']} longer than {data.max_len} pieces, "
                 f"{counts['bad_ratio']} with length ratio over {data.max_len_ratio}")
        log.info(f"vocabulary: {len(self.src_vocab)} source, {len(self.tgt_vocab)} target pieces")
        self.valid_src_text, self.valid_ref = (load_split(data, data.valid, "validation")
                                               if data.valid else ([], []))
        self.valid_src = self.src_vocab.encode(self.valid_src_text)
        self.valid_tgt = self.tgt_vocab.encode(self.valid_ref)

    def batch(self, idx: np.ndarray) -> Batch:
        return batch_of(self.src, self.tgt, idx)

    def target_tokens(self, batches: list[np.ndarray]) -> int:
        """Real target tokens (end markers included) of ``batches``, counted on the host."""
        idx = np.concatenate(batches)
        return int(self.tgt.lengths[idx].sum(dtype=np.int64)) + len(idx)

    def epoch(self, batch_size: int, unit: str, seed: int, epoch: int) -> list[np.ndarray]:
        return epoch_batches(self.src.lengths, self.tgt.lengths, batch_size, unit, seed, epoch)
