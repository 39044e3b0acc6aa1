"""Steered search: a forced target prefix, and terminology constraints met by dynamic beam
allocation (Post & Vilar 2018).

A prefix is forced, scored and part of the output; each constraint phrase must appear in the
output contiguously, and is met once its pieces have (phrases may overlap: ``a b c`` meets
``a b`` and ``b c``). A hypothesis's *bank* is the pieces of its met phrases plus its longest
partial match of an unmet one: extending that match always raises the bank, so a sentence whose
constraints fit in its length meets them all. No value mixes sentences, so a steered
translation does not depend on its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NO_PIECE = -1  # padding of prefixes, phrases and tails: no piece id is negative


@dataclass
class Steering:
    """A batch's steering: P, Q, L its longest prefix, most phrases, longest phrase (0: none)."""
    prefix: torch.Tensor  # [B, P] forced pieces, NO_PIECE padded
    phrases: torch.Tensor  # [B, Q, L] constraint pieces, NO_PIECE padded
    lengths: torch.Tensor  # [B, Q] pieces of each phrase (0: no phrase)
    most: int = 0  # the most constraint pieces of any sentence, known on the host

    @classmethod
    def of(cls, prefixes: list[list[int]], constraints: list[list[list[int]]],
           device: torch.device | str = "cpu") -> Steering:
        """prefixes: a piece list per sentence; constraints: its phrases, each a piece list."""
        most = max((len(p) for p in prefixes), default=0)
        prefix = torch.full((len(prefixes), most), NO_PIECE, dtype=torch.long)
        for i, pieces in enumerate(prefixes):
            prefix[i, :len(pieces)] = torch.tensor(pieces, dtype=torch.long)
        count = max((len(c) for c in constraints), default=0)
        longest = max((len(p) for c in constraints for p in c), default=0)
        phrases = torch.full((len(constraints), count, longest), NO_PIECE, dtype=torch.long)
        lengths = torch.zeros((len(constraints), count), dtype=torch.long)
        for i, sentence in enumerate(constraints):
            for j, pieces in enumerate(sentence):
                phrases[i, j, :len(pieces)] = torch.tensor(pieces, dtype=torch.long)
                lengths[i, j] = len(pieces)
        return cls(prefix.to(device), phrases.to(device), lengths.to(device),
                   max((sum(len(p) for p in c) for c in constraints), default=0))

    @property
    def constrained(self) -> bool:
        return self.phrases.size(1) > 0

    @property
    def total(self) -> torch.Tensor:
        """[B] constraint pieces of each sentence: the bank of a hypothesis that meets them all."""
        return self.lengths.sum(1)

    def force_prefix(self, logp: torch.Tensor, raw: torch.Tensor | None, sentence: torch.Tensor,
                     step: int) -> torch.Tensor:
        """logp [R, V] with rows still in their prefix held to its piece ``step``, scored ``raw``
        [R, 1] (the model's log-probability, read before the rules); sentence: [R] each row's."""
        if step >= self.prefix.size(1):
            return logp
        piece = self.prefix[sentence, step]
        allowed = torch.full_like(logp, float("-inf")).scatter_(1, piece.clamp(min=0)[:, None], raw)
        return torch.where((piece >= 0)[:, None], allowed, logp)

    def prefix_pieces(self, sentence: torch.Tensor, step: int) -> torch.Tensor | None:
        """[R] the piece each row's prefix forces at ``step`` (0 where none), None past all."""
        return None if step >= self.prefix.size(1) else self.prefix[sentence, step].clamp(min=0)


@dataclass
class Progress:
    """Each hypothesis row's way through its sentence's phrases (R rows)."""
    tail: torch.Tensor  # [R, L] its last L pieces, NO_PIECE before its first
    met: torch.Tensor  # [R, Q] phrases met so far
    matched: torch.Tensor  # [R, Q] its longest suffix that begins each phrase (L if met)
    bank: torch.Tensor  # [R] pieces of met phrases + the longest partial match of an unmet one

    @classmethod
    def start(cls, steer: Steering) -> Progress:
        rows, count, longest = steer.phrases.shape
        device = steer.phrases.device
        return cls(torch.full((rows, longest), NO_PIECE, dtype=torch.long, device=device),
                   torch.zeros((rows, count), dtype=torch.bool, device=device),
                   torch.zeros((rows, count), dtype=torch.long, device=device),
                   torch.zeros(rows, dtype=torch.long, device=device))

    def select(self, index: torch.Tensor) -> Progress:
        """The rows ``index`` (any shape: [N] rows, or [A, C] candidates)."""
        return Progress(self.tail[index], self.met[index], self.matched[index], self.bank[index])

    def take(self, index: torch.Tensor) -> Progress:
        """Of fields [A, C, ...]: the entries ``index`` [A, n] of each sentence -> [A, n, ...]."""
        def gather(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, index.view(index.shape + (1,) * (x.dim() - 2)).expand(
                index.shape + x.shape[2:]))
        return Progress(*(gather(x) for x in (self.tail, self.met, self.matched, self.bank)))

    def flat(self) -> Progress:
        """Fields [A, k, ...] -> rows [A * k, ...]."""
        return Progress(*(x.flatten(0, 1) for x in (self.tail, self.met, self.matched, self.bank)))


def advance(progress: Progress, phrases: torch.Tensor, lengths: torch.Tensor, piece: torch.Tensor
            ) -> Progress:
    """The progress [*, ...] of rows [*] extended by ``piece`` [*]; phrases [*, Q, L] and
    lengths [*, Q] their sentences'."""
    longest = phrases.size(-1)
    tail = torch.cat([progress.tail[..., 1:], piece[..., None]], -1) if longest else progress.tail
    matched = torch.zeros_like(progress.matched)
    for size in range(1, longest + 1):  # the last `size` pieces begin the phrase: a match
        same = ((tail[..., None, longest - size:] == phrases[..., :size]).all(-1)
                & (size <= lengths))
        matched = torch.where(same, size, matched)
    met = progress.met | ((matched == lengths) & (lengths > 0))
    partial = torch.where(met, 0, matched).amax(-1)  # Q > 0: only constrained search advances
    bank = (lengths * met).sum(-1) + partial
    return Progress(tail, met, torch.where(met, lengths, matched), bank)


def best_extensions(scores: torch.Tensor, logp: torch.Tensor, width: int, count: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sentence's ``count`` best extensions of its beams [A, width] by the step's logp
    [A * width, V], best first: summed log-probabilities, pieces, state rows extended [A, count]."""
    sentences, vocab = scores.size(0), logp.size(1)
    candidates = (scores.view(-1, 1) + logp).view(sentences, width * vocab)
    top_scores, top_ids = candidates.topk(count, dim=1)
    rows = top_ids // vocab + width * torch.arange(sentences, device=logp.device)[:, None]
    return top_scores, top_ids % vocab, rows


def constrained_candidates(scores: torch.Tensor, logp: torch.Tensor, width: int, count: int,
                           steer: Steering, sentence: torch.Tensor, progress: Progress
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Progress]:
    """Dynamic beam allocation: ``best_extensions``' [A, count, ...] for the candidates the beam
    takes, in order, with their progress. Candidates (the ``count`` best extensions, each beam's
    best, each beam's next piece of every unmet phrase) are grouped into banks and taken in
    rounds, each bank's best per round, the highest bank first (so the top bank survives).
    logp: the end marker banned where a phrase is unmet; sentence: [A * width] each row's."""
    sentences, vocab = scores.size(0), logp.size(1)
    rows_of = torch.arange(sentences * width, device=logp.device)
    flat = scores.reshape(-1)
    top_scores, top_pieces, top_rows = best_extensions(scores, logp, width, count)
    best, best_piece = logp.max(1)
    phrases, lengths = steer.phrases[sentence], steer.lengths[sentence]  # [R, Q, L], [R, Q]
    wanted = phrases.gather(2, progress.matched.clamp(max=phrases.size(2) - 1)[..., None]
                            ).squeeze(2)
    open_ = ~progress.met & (lengths > 0)
    wanted_score = torch.where(open_, flat[:, None] + logp.gather(1, wanted.clamp(min=0)),
                               float("-inf"))
    cand_score = torch.cat([top_scores, (flat + best).view(sentences, width),
                            wanted_score.view(sentences, -1)], 1)
    cand_piece = torch.cat([top_pieces, best_piece.view(sentences, width),
                            wanted.clamp(min=0).view(sentences, -1)], 1)
    cand_row = torch.cat([top_rows, rows_of.view(sentences, width),
                          rows_of[:, None].expand(-1, phrases.size(1)).reshape(sentences, -1)], 1)
    # One candidate per (row, piece): duplicates (the same sum, computed the same way) dropped.
    key, order = (cand_row * vocab + cand_piece).sort(dim=1, stable=True)
    cand_score, cand_piece, cand_row = (x.gather(1, order)
                                        for x in (cand_score, cand_piece, cand_row))
    duplicate = torch.zeros_like(key, dtype=torch.bool)
    duplicate[:, 1:] = key[:, 1:] == key[:, :-1]
    cand_score = cand_score.masked_fill(duplicate, float("-inf"))
    moved = advance(progress.select(cand_row), phrases[cand_row], lengths[cand_row], cand_piece)
    # Rounds: by score within each bank (rank 0 = its best), then the higher bank first.
    by_score = cand_score.argsort(dim=1, descending=True, stable=True)
    bank = moved.bank.gather(1, by_score)
    valid = cand_score.gather(1, by_score) > float("-inf")
    same_bank = torch.nn.functional.one_hot(bank, steer.most + 1) * valid[..., None]
    rank = (same_bank.cumsum(1) - same_bank).gather(2, bank[..., None]).squeeze(2)
    priority = torch.where(valid, rank * (1 << 24) + ((1 << 24) - 1 - bank), 1 << 62)
    taken = by_score.gather(1, priority.argsort(dim=1, stable=True)[:, :count])
    return (cand_score.gather(1, taken), cand_piece.gather(1, taken), cand_row.gather(1, taken),
            moved.take(taken))
