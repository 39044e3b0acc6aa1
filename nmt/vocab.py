"""Subword vocabularies: sentencepiece models, trained on the training side.

Ids are fixed: 0 = padding, 1 = unknown, 2 = the end marker ``_`` (docs/model.md §3), the
end-of-sentence control symbol, which no text produces (a literal "_" is an ordinary piece).
Byte fallback encodes unseen characters as bytes: any raw text comes back as it went in.
"""
from __future__ import annotations

import functools
import hashlib
import io
import unicodedata
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from nmt.errors import CheckpointError, ConfigError
from nmt.io import write_bytes

PAD = 0
UNK = 1
END = 2
END_SYMBOL = "_"


def vocab_paths(run_dir: Path, joint: bool) -> tuple[Path, Path]:
    """(source, target) sentencepiece model files of a run directory."""
    if joint:
        return run_dir / "spm.model", run_dir / "spm.model"
    return run_dir / "spm.src.model", run_dir / "spm.tgt.model"


class Vocab:
    """A sentencepiece model with the project's fixed special ids."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: sentencepiece model not found")
        self.model_bytes = self.path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except Exception:  # sentencepiece raises RuntimeError/OSError depending on version
            raise CheckpointError(f"{self.path}: not a sentencepiece model") from None
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.eos_id()) != (PAD, UNK, END):
            raise CheckpointError(f"{self.path}: special ids differ from pad=0, unk=1, end=2")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """sha256 of the model file: checkpoints record it to detect a swapped model."""
        return hashlib.sha256(self.model_bytes).hexdigest()

    def encode(self, sentences: list[str], threads: int = -1) -> list[list[int]]:
        """Raw sentences -> piece ids, no end marker (-1 threads: sentencepiece's default)."""
        return self.sp.encode(sentences, out_type=int, num_threads=threads)

    def sample(self, sentences: list[str], alpha: float, seed: int) -> list[list[int]]:
        """``encode`` with a sampled segmentation (unigram ``alpha``, or BPE-dropout at rate
        ``alpha``), the same for the same seed: one thread, which sentencepiece seeds."""
        spm.set_random_generator_seed(seed)
        return self.sp.encode(sentences, out_type=int, enable_sampling=True, alpha=alpha,
                              nbest_size=-1, num_threads=1)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Piece ids (no end marker, no padding) -> raw sentences, each ``one_line``."""
        return [one_line(text) for text in self.sp.decode(ids)]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Readable pieces for debugging and reports; the end marker shows as ``_``."""
        return [END_SYMBOL if i == END else one_line(self.sp.id_to_piece(int(i))) for i in ids]

    @functools.cached_property
    def control_ids(self) -> tuple[int, ...]:
        """What search never emits: pieces that would output a control character or line break
        (bytes 0x00-0x1F and 0x7F, any piece holding one) and source tags (nmt.directions)."""
        sp = self.sp
        banned = []
        for i in range(len(self)):
            if sp.is_control(i) and i not in (PAD, END):  # a tag (nmt.directions): sources only
                banned.append(i)
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            piece = sp.id_to_piece(i)
            if sp.is_byte(i) and (int(piece[3:5], 16) < 0x20 or piece == "<0x7F>"):
                banned.append(i)
            elif not sp.is_byte(i) and one_line(piece) != piece:
                banned.append(i)
        return tuple(banned)

    def tag_ids(self, tags: list[str]) -> list[int]:
        """The control-symbol ids of ``tags``; ConfigError for one the model lacks."""
        ids = [self.sp.piece_to_id(tag) for tag in tags]
        for tag, i in zip(tags, ids):
            if not self.sp.is_control(i) or i in (PAD, END):
                raise ConfigError(f"{self.path}: has no tag {tag} (data.directions): the "
                                  "vocabulary was trained for other directions")
        return ids

    @functools.cached_property
    def markup_ids(self) -> tuple[int, ...]:
        """Pieces that would write ``<``, ``>``, ``{`` or ``}``: with ``decode.markup: keep``
        search never emits them, so a translation cannot invent a tag or a placeholder."""
        sp = self.sp
        return tuple(i for i in range(len(self))
                     if not (sp.is_control(i) or sp.is_unknown(i)) and (
                         sp.id_to_piece(i) in ("<0x3C>", "<0x3E>", "<0x7B>", "<0x7D>")
                         if sp.is_byte(i) else any(c in sp.id_to_piece(i) for c in "<>{}")))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Per piece of ``text`` (``encode``), the characters (start, end) it covers, leading
        whitespace left out; a byte piece before the last of its character covers none."""
        try:  # sentencepiece < 0.2.1
            pieces = self.sp.encode(text, out_type="immutable_proto").pieces
        except ValueError:
            pieces = self.sp.encode(text, return_type="proto").pieces
        # byte offset -> character offset: the end of a character's bytes is the next character
        chars = [0] + [n + 1 for n, c in enumerate(text) for _ in c.encode("utf-8")]
        spans = []
        for piece in pieces:  # begin, end: byte offsets into text, dropped whitespace included
            begin, end = chars[piece.begin], chars[piece.end]
            covered = text[begin:end]
            spans.append((begin + len(covered) - len(covered.lstrip()), end))
        return spans

    def words(self, ids: list[int]) -> list[str]:
        """The text each piece adds to ``decode([ids])`` (a byte piece before the last of its
        character adds ""): joined, the decoded sentence."""
        texts = [""] + self.decode([ids[:t] for t in range(1, len(ids) + 1)])
        words, before = [], ""
        for t, text in enumerate(texts[1:], 1):
            if text.startswith(before) and (t == len(ids) or "\ufffd" not in text[len(before):]):
                words.append(text[len(before):])
                before = text
            else:
                words.append("")
        if before != texts[-1]:  # the pieces did not decode as a growing prefix: all at the end
            words = [""] * (len(ids) - 1) + [texts[-1]]
        return words


def one_line(text: str) -> str:
    """``text`` with every control character (Cc: tab, newline, ...), line and paragraph
    separator made a space: one output line per input line, one field per tab-separated column."""
    if text.isprintable() or not any(unicodedata.category(c) in LINE_BREAKING for c in text):
        return text
    return "".join(" " if unicodedata.category(c) in LINE_BREAKING else c for c in text)


LINE_BREAKING = ("Cc", "Zl", "Zp")


def train_vocab(sentences: Iterable[str], path: str | Path, vocab_size: int,
                model_type: str = "bpe", tags: list[str] = ()) -> Vocab:
    """Train a sentencepiece model and write it atomically to ``path``; ``tags``: control
    symbols (ids after the special ones) that only ``tag_ids`` gives."""
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer,
            vocab_size=vocab_size, model_type=model_type,
            pad_id=PAD, unk_id=UNK, eos_id=END, bos_id=-1, control_symbols=list(tags),
            byte_fallback=True, character_coverage=1.0,
            hard_vocab_limit=False,  # a small corpus may not support the full size
            shuffle_input_sentence=False,
            num_threads=2, minloglevel=2)
    except RuntimeError as err:  # e.g. a size below the 256 byte pieces + specials
        raise ConfigError(f"data.vocab_size: sentencepiece cannot train {vocab_size} pieces "
                          f"on this corpus ({str(err).strip().splitlines()[-1]})") from None
    write_bytes(path, buffer.getvalue())
    return Vocab(path)
