"""Corpora: loading parallel text, length filtering, token-based batching.

A batch carries the source with the end marker appended (the encoder reads
``A B C _``), the decoder input that starts with the end marker (``_ x y``)
and the decoder target that ends with it (``x y _``) -- docs/model.md §3.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.config import Config, DataConfig
from nmt.errors import ConfigError, DataError
from nmt.io import read_lines
from nmt.vocab import END, PAD, Vocab, train_vocab, vocab_paths

log = logging.getLogger("nmt")

FILE_LOADERS = ("json", "csv", "parquet")


def load_split(cfg: DataConfig, split: str, which: str = "split") -> tuple[list[str], list[str]]:
    """The (source, target) sentences of one split, as raw text.

    ``split`` is a file prefix (loader "text"), a data file (json, csv,
    parquet) or a split name of a hub / local dataset folder.
    """
    if cfg.loader == "text":
        src_path = Path(f"{split}.{cfg.src_lang}")
        tgt_path = Path(f"{split}.{cfg.tgt_lang}")
        src, tgt = read_lines(src_path), read_lines(tgt_path)
        if len(src) != len(tgt):
            raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                            "parallel files must be line-aligned")
        where = str(src_path)
    else:
        src, tgt = _load_dataset(cfg, split)
        where = split
    if not src:
        raise DataError(f"{where}: the {which} corpus is empty")
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


def _load_dataset(cfg: DataConfig, split: str) -> tuple[list[str], list[str]]:
    """Read a split through Hugging Face ``datasets`` (an optional extra, imported only when used)."""
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
            data = datasets.load_dataset(cfg.loader, data_files=split, split="train")
            where = split
        else:
            data = datasets.load_dataset(cfg.loader, cfg.hub_config or None, split=split)
            where = f"{cfg.loader}[{split}]"
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; the message is what helps
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{split}: cannot load with datasets ({cfg.loader}): {first}") from None
    src_field = cfg.src_field or cfg.src_lang
    tgt_field = cfg.tgt_field or cfg.tgt_lang
    src, tgt = [], []
    for row, record in enumerate(data, 1):
        src.append(_field(record, src_field, f"{where}: record {row}"))
        tgt.append(_field(record, tgt_field, f"{where}: record {row}"))
    return src, tgt


def filter_pairs(src_ids: list[list[int]], tgt_ids: list[list[int]], max_len: int,
                 max_ratio: float) -> tuple[list[int], dict]:
    """Indices of the pairs to train on, and counts of what was dropped and why."""
    keep, counts = [], {"kept": 0, "empty": 0, "too_long": 0, "bad_ratio": 0}
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            counts["empty"] += 1
        elif len(s) > max_len or len(t) > max_len:
            counts["too_long"] += 1
        elif max(len(s), len(t)) > max_ratio * min(len(s), len(t)):
            counts["bad_ratio"] += 1
        else:
            keep.append(i)
    counts["kept"] = len(keep)
    return keep, counts


class Pieces:
    """Sentences of piece ids in one flat array, so that a batch is padded with
    a few array operations instead of a Python loop over its sentences."""

    def __init__(self, seqs: list[list[int]]):
        self.lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64,
                                count=int(self.lengths.sum()))

    def padded(self, idx: np.ndarray, end_first: bool) -> np.ndarray:
        """Sentences ``idx`` as a [B, longest + 1] array with the end marker first
        (``_ x y``) or last (``x y _``), padded with PAD."""
        lengths = self.lengths[idx]
        cols = np.arange(int(lengths.max()) + 1)[None, :] - int(end_first)  # position in the sentence
        real = (cols >= 0) & (cols < lengths[:, None])
        out = np.full(real.shape, PAD, dtype=np.int64)
        out[real] = self.flat[(self.offsets[idx][:, None] + cols)[real]]
        out[np.arange(len(idx)), 0 if end_first else lengths] = END
        return out


@dataclass
class Batch:
    src: torch.Tensor  # [B, S] source ids + end marker, padded
    src_lengths: np.ndarray  # [B] source lengths with the end marker, on the host (packing is planned there)
    tgt_in: torch.Tensor  # [B, T] end marker + target ids, padded
    tgt_out: torch.Tensor  # [B, T] target ids + end marker, padded
    positions: torch.Tensor  # [N] indices into tgt_out.view(-1) of the real target tokens, in order
    n_tokens: int  # real target tokens (end markers included), known on the host

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``. To a GPU the copies come from pinned memory and
        do not wait: the host goes on preparing work while they run."""
        if device.type != "cuda":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.src), self.src_lengths, move(self.tgt_in), move(self.tgt_out),
                     move(self.positions), self.n_tokens)


def batch_of(src: Pieces, tgt: Pieces, idx: np.ndarray) -> Batch:
    """The batch of sentence pairs ``idx`` (docs/model.md §3: ``A B C _`` -> ``_ x y`` / ``x y _``)."""
    tgt_out = tgt.padded(idx, end_first=False)
    positions = np.flatnonzero(tgt_out != PAD)
    return Batch(torch.from_numpy(src.padded(idx, end_first=False)),
                 src.lengths[idx] + 1, torch.from_numpy(tgt.padded(idx, end_first=True)),
                 torch.from_numpy(tgt_out), torch.from_numpy(positions), len(positions))


def source_tensor(src: list[list[int]]) -> tuple[torch.Tensor, np.ndarray]:
    """Source ids -> ([B, S] padded ids with the end marker, [B] lengths on the host)."""
    pieces, idx = Pieces(src), np.arange(len(src))
    return torch.from_numpy(pieces.padded(idx, end_first=False)), pieces.lengths + 1


def make_batch(src: list[list[int]], tgt: list[list[int]]) -> Batch:
    return batch_of(Pieces(src), Pieces(tgt), np.arange(len(src)))


def epoch_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, batch_size: int, unit: str,
                  seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch, as arrays of example indices.

    Examples are sorted by length (ties broken at random) so a batch holds
    sentences of similar length and little padding; the batch order is then
    shuffled. Everything depends only on (seed, epoch), so a resumed run sees
    exactly the batches it would have seen.
    """
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(src_lens)), tgt_lens, src_lens))
    batches, start = [], 0
    longest = 0
    for pos, i in enumerate(order):
        longest = max(longest, src_lens[i] + 1, tgt_lens[i] + 1)
        n = pos - start + 1
        size = n * longest if unit == "tokens" else n
        if size > batch_size and n > 1:
            batches.append(order[start:pos])
            start, longest = pos, max(src_lens[i], tgt_lens[i]) + 1
    batches.append(order[start:])
    perm = rng.permutation(len(batches))
    return [batches[j] for j in perm]


class Corpus:
    """A run's training data as piece ids (length-filtered), its validation
    data, and its vocabularies (trained on the training side, or read back
    from the run directory on --resume; under torchrun rank 0 trains them)."""

    def __init__(self, cfg: Config, run_dir: Path, reuse_vocab: bool, rank: int = 0, world: int = 1):
        data = cfg.data
        train_src, train_tgt = load_split(data, data.train, "training")
        src_path, tgt_path = vocab_paths(run_dir, data.joint_vocab)
        if world > 1:
            import torch.distributed as dist
            if rank == 0 and not reuse_vocab:
                self._train_vocabs(data, train_src, train_tgt, src_path, tgt_path)
            dist.barrier()
            reuse_vocab = True
        if reuse_vocab:
            self.src_vocab, self.tgt_vocab = Vocab(src_path), Vocab(tgt_path)
        else:
            self._train_vocabs(data, train_src, train_tgt, src_path, tgt_path)
        src_ids, tgt_ids = self.src_vocab.encode(train_src), self.tgt_vocab.encode(train_tgt)
        keep, counts = filter_pairs(src_ids, tgt_ids, data.max_len, data.max_len_ratio)
        log.info(f"training pairs: {len(src_ids)} read, {counts['kept']} kept, dropped "
                 f"{counts['empty']} empty, {counts['too_long']} longer than {data.max_len} pieces, "
                 f"{counts['bad_ratio']} with length ratio over {data.max_len_ratio}")
        if not keep:
            raise DataError(f"{data.train}: no training pair left after length filtering")
        self.filter_counts = counts
        self.src = Pieces([src_ids[i] for i in keep])
        self.tgt = Pieces([tgt_ids[i] for i in keep])
        log.info(f"vocabulary: {len(self.src_vocab)} source, {len(self.tgt_vocab)} target pieces")
        self.valid_src_text, self.valid_ref = (load_split(data, data.valid, "validation")
                                               if data.valid else ([], []))
        self.valid_src = self.src_vocab.encode(self.valid_src_text)
        self.valid_tgt = self.tgt_vocab.encode(self.valid_ref)

    def _train_vocabs(self, data: DataConfig, train_src: list[str], train_tgt: list[str],
                      src_path: Path, tgt_path: Path) -> None:
        if data.joint_vocab:
            self.src_vocab = self.tgt_vocab = train_vocab(train_src + train_tgt, src_path,
                                                          data.vocab_size, data.subword_type)
        else:
            self.src_vocab = train_vocab(train_src, src_path, data.vocab_size, data.subword_type)
            self.tgt_vocab = train_vocab(train_tgt, tgt_path, data.vocab_size, data.subword_type)

    def batch(self, idx: np.ndarray) -> Batch:
        return batch_of(self.src, self.tgt, idx)

    def target_tokens(self, batches: list[np.ndarray]) -> int:
        """Real target tokens (end markers included) of ``batches``, counted on the host."""
        return int(sum(self.tgt.lengths[idx].sum() + len(idx) for idx in batches))

    def epoch(self, batch_size: int, unit: str, seed: int, epoch: int) -> list[np.ndarray]:
        return epoch_batches(self.src.lengths, self.tgt.lengths, batch_size, unit, seed, epoch)
