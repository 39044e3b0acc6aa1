"""Corpora: loading parallel text, length filtering, token-based batching.

A batch carries the source with the end marker appended (the encoder reads
``A B C _``), the decoder input that starts with the end marker (``_ x y``)
and the decoder target that ends with it (``x y _``) -- SPEC §3.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.config import DataConfig
from nmt.errors import DataError
from nmt.io import read_lines
from nmt.vocab import END, PAD

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
    """Read a split through Hugging Face ``datasets`` (imported only when used)."""
    import datasets

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


@dataclass
class Batch:
    src: torch.Tensor  # [B, S] source ids + end marker, padded
    src_lengths: torch.Tensor  # [B] (on the CPU, as packing wants)
    tgt_in: torch.Tensor  # [B, T] end marker + target ids, padded
    tgt_out: torch.Tensor  # [B, T] target ids + end marker, padded
    n_tokens: int  # real target tokens (end markers included)

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.src.to(device), self.src_lengths, self.tgt_in.to(device),
                     self.tgt_out.to(device), self.n_tokens)


def pad(seqs: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def source_tensor(src: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids -> ([B, S] padded ids with the end marker, [B] lengths)."""
    seqs = [s + [END] for s in src]
    return pad(seqs), torch.tensor([len(s) for s in seqs], dtype=torch.long)


def make_batch(src: list[list[int]], tgt: list[list[int]]) -> Batch:
    src_t, lengths = source_tensor(src)
    tgt_in = pad([[END] + t for t in tgt])
    tgt_out = pad([t + [END] for t in tgt])
    return Batch(src_t, lengths, tgt_in, tgt_out, sum(len(t) + 1 for t in tgt))


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
