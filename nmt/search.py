"""Batched greedy and beam search.

Decoding follows docs/model.md §3: the first decoder input is the end marker, each
later input is the previous output, and a hypothesis ends when it emits the
end marker (or reaches its maximum length). Every decision about a sentence
depends on that sentence's rows alone, the model computes each row's numbers
from that row alone (``nmt.invariant``), and finished sentences leave the batch,
so a translation and its score do not depend, bit for bit, on the batch.

The bookkeeping is tensor operations on the model's device: per step the host
learns only which sentences are still decoding (one small transfer, needed to
shrink the batch), and it reads the results once, at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nmt.model import Seq2Seq
from nmt.vocab import END


@dataclass
class Hypothesis:
    tokens: list[int]  # output piece ids, without the end marker
    score: float  # sum of log-probabilities (end marker included when emitted)
    attention: torch.Tensor | None = None  # [len(tokens) + ended, S]
    ended: bool = True  # it emitted the end marker (else it was cut at the maximum length)


def max_output_lengths(lengths: np.ndarray | torch.Tensor, ratio: float, cap: int = 0) -> list[int]:
    """Most output pieces per sentence: ratio x source pieces (without the end marker) + 5,
    and at most ``cap`` (0: no cap)."""
    most = [math.ceil(ratio * (n - 1)) + 5 for n in lengths.tolist()]
    return [min(m, cap) for m in most] if cap else most


def _still_decoding(go: torch.Tensor) -> torch.Tensor:
    """[A] bool -> [A'] positions of the rows that go on: the step's one device-to-host transfer."""
    return go.nonzero().squeeze(1)


def _hypotheses(tokens: torch.Tensor, steps: torch.Tensor, scores: torch.Tensor,
                attention: torch.Tensor | None, per: int) -> list[list[Hypothesis]]:
    """Device buffers -> the hypotheses of each sentence, in a few transfers at the end.

    Rows i*per .. i*per+per-1 are sentence i's; rows where no step ran are left out.
    tokens: [N, T] pieces, the last of them the end marker if one was emitted; steps: [N]
    decoder steps run; scores: [N]; attention: [N, T, S] or None.
    """
    attention = None if attention is None else attention.cpu()
    hyps: list[list[Hypothesis]] = [[] for _ in range(len(steps) // per)]
    for n, (seq, length, score) in enumerate(zip(tokens.tolist(), steps.tolist(), scores.tolist())):
        if length:
            ended = seq[length - 1] == END
            att = None if attention is None else attention[n, :length].clone()
            hyps[n // per].append(Hypothesis(seq[:length - ended], score, att, ended))
    return hyps


@dataclass(frozen=True)
class Rules:
    """What search may not emit, the same for every row: the pieces ``never`` (those that
    would break the output's line format, nmt.vocab.Vocab.control_ids), the end marker
    before ``min_length`` pieces, and (``no_repeat_ngram_size`` n > 0) a piece that would
    make an n-gram the hypothesis already holds. Banned pieces get log-probability -inf
    before any choice; the scores of the pieces chosen stay the model's."""
    min_length: int = 0
    no_repeat_ngram_size: int = 0
    never: tuple[int, ...] = ()

    @property
    def needs_history(self) -> bool:
        return self.no_repeat_ngram_size > 0

    def apply(self, logp: torch.Tensor, step: int, history: torch.Tensor | None) -> torch.Tensor:
        """logp: [R, V] at decoder step ``step``; history: [R, step] each row's pieces so far."""
        if self.never:  # in place: logp is the step's own new tensor
            logp.index_fill_(1, torch.tensor(self.never, device=logp.device), float("-inf"))
        if step < self.min_length:
            logp = logp.index_fill(1, torch.tensor([END], device=logp.device), float("-inf"))
        n = self.no_repeat_ngram_size
        if n and step >= n:  # each earlier n-gram whose first n - 1 pieces are the last n - 1
            grams = history.unfold(1, n, 1)  # [R, step - n + 1, n]
            same = (grams[:, :, :-1] == history[:, None, step - n + 1:]).all(2)
            banned = torch.zeros_like(logp).scatter_add_(1, grams[:, :, -1], same.to(logp.dtype))
            logp = logp.masked_fill(banned > 0, float("-inf"))
        return logp


def normalised_score(hyp: "Hypothesis", length_penalty: float, kind: str = "length") -> float:
    """A finished hypothesis's rank: score / length ** alpha ("length") or score /
    ((5 + length) / 6) ** alpha ("gnmt", Wu et al. 2016); an emitted end marker counts as a
    step (one cut at the maximum length has none)."""
    length = len(hyp.tokens) + hyp.ended
    return hyp.score / (length if kind == "length" else (5 + length) / 6) ** length_penalty


@dataclass
class Sampling:
    """Draw each piece at random instead of taking the most probable one: from the model's
    distribution flattened (temperature > 1) or sharpened (< 1), cut to the ``top_k`` most
    probable pieces and to the fewest whose probability reaches ``top_p`` (0 and 1: no cut).

    Each row draws its noise from a generator seeded by its own seed and the step, so a
    sentence's sample depends on its seed alone, never on the rest of its batch.
    """
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def pick(self, logp: torch.Tensor, seeds: list[int], step: int) -> torch.Tensor:
        """logp: [A, V], a seed per row -> the sampled pieces [A] (the Gumbel-max trick)."""
        scores = logp.float() / self.temperature
        if 0 < self.top_k < scores.size(1):
            kth = scores.topk(self.top_k, dim=1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=1, descending=True)
            probs = ordered.softmax(dim=1)
            beyond = probs.cumsum(dim=1) - probs >= self.top_p  # the pieces before already reach top_p
            scores = scores.masked_fill(beyond.scatter(1, order, beyond), float("-inf"))
        noise = torch.stack([torch.rand(scores.size(1), device=scores.device, generator=torch.Generator(
            scores.device).manual_seed((seed + step * 0x9E3779B97F4A7C15) % 2**63)) for seed in seeds])
        return (scores - torch.log(-torch.log(noise.clamp_min(1e-12)))).argmax(dim=1)


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: torch.Tensor, lengths: np.ndarray | torch.Tensor,
                  max_length_ratio: float = 2.0, keep_attention: bool = False,
                  sampling: Sampling | None = None, seeds: list[int] | None = None,
                  rules: Rules = Rules(), max_length: int = 0) -> list[Hypothesis]:
    """Greedy decoding of a batch (or, with ``sampling``, sampling with one seed per sentence).
    src: [B, S] ids with end marker, lengths: [B]. A hypothesis's score is the model's
    log-probability of its pieces."""
    memory, state = model.encode(src, lengths)
    (batch, source), device = src.shape, src.device
    max_lens = max_output_lengths(lengths, max_length_ratio, max_length)
    # Per sentence: its pieces [B, T], steps run [B], score [B] (float32 terms summed in
    # float64, as Python floats would sum them) and attention [B, T, S].
    out, ran = src.new_zeros((batch, max(max_lens))), src.new_zeros(batch)
    total = torch.zeros(batch, dtype=torch.float64, device=device)
    att = None  # [B, T, S], made at the first step (from the weights: any model's memory)
    alive = torch.arange(batch, device=device)  # [A] sentence of each row still decoding
    limit = torch.tensor(max_lens, device=device)  # [A] its maximum output length
    prev = src.new_full((batch,), END)
    for t in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        logp = rules.apply(logp, t, out[alive, :t] if rules.needs_history else None)
        if sampling is None:
            best, prev = logp.max(dim=-1)
        else:
            prev = sampling.pick(logp, [seeds[i] for i in alive.tolist()], t)
            best = logp.gather(1, prev[:, None]).squeeze(1)
        out[alive, t], ran[alive] = prev, t + 1
        total[alive] += best.double()
        if keep_attention:
            if att is None:
                att = weights.new_zeros((batch, max(max_lens), source))
            att[alive, t] = weights
        keep = _still_decoding((prev != END) & (limit > t + 1))
        if len(keep) < len(alive):  # finished sentences leave the batch
            if len(keep) == 0:
                break
            state, memory, prev = state.select(keep), memory.select(keep), prev[keep]
            alive, limit = alive[keep], limit[keep]
    return [hyps[0] for hyps in _hypotheses(out, ran, total, att, 1)]


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, lengths: np.ndarray | torch.Tensor, beam_size: int,
                length_penalty: float = 1.0, max_length_ratio: float = 2.0, n_best: int = 1,
                keep_attention: bool = False, rules: Rules = Rules(),
                length_penalty_type: str = "length", max_length: int = 0) -> list[list[Hypothesis]]:
    """Beam search of a batch; returns the ``n_best`` hypotheses of each sentence, best first.

    Beams are ranked by their summed log-probability; finished hypotheses by
    ``normalised_score`` (ties: in the order they finished). A
    sentence is done when ``beam_size`` hypotheses have ended (an end marker
    among the top ``beam_size`` candidates ends one) or when it reaches its
    maximum length (all top ``beam_size`` candidates end). With beam_size 1
    this is exactly greedy search.
    """
    k, per = beam_size, 2 * beam_size
    memory, state = model.encode(src, lengths)
    (batch, source), device = src.shape, src.device
    max_lens = max_output_lengths(lengths, max_length_ratio, max_length)
    # Rows a*width .. a*width+width-1 of the state are the beams of sentence alive[a]; the
    # memory keeps one row per sentence, shared by its beams (see Attention.forward). All
    # beams start identical, so the first step runs one row per sentence (width 1), then k.
    width = 1
    alive = torch.arange(batch, device=device)  # [A] sentence of each memory row
    limit = torch.tensor(max_lens, device=device)  # [A] its maximum output length
    done = torch.zeros_like(alive)  # [A] its finished hypotheses so far
    scores = torch.zeros((batch, width), device=device)  # [A, width] beams' summed log-probs
    # A beam's pieces are not copied from step to step: each step keeps, per state row,
    # the piece it emitted last and the row of the step before it extends (a backpointer).
    path = Backpointers()
    # Finished hypotheses in the order they ended, sentence i's in rows i * per + j: fewer
    # than k before its last step, which ends at most k more, fill 2k - 1 rows; its last
    # row takes the writes of top-k candidates that go on. Per row: the decoder steps run
    # (0: empty), the state row it extends at its last step, its last piece, its score.
    fin_steps, fin_rows = src.new_zeros(batch * per), src.new_zeros(batch * per)
    fin_last, fin_scores = src.new_zeros(batch * per), torch.zeros(batch * per, device=device)
    rank = torch.arange(2 * k, device=device)
    prev, history = src.new_full((batch,), END), src.new_zeros((batch, 0))  # [R, t] if rules need it
    for t in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        logp = rules.apply(logp, t, history)
        path.attention.append(weights if keep_attention else None)
        vocab = logp.size(1)
        candidates = (scores.view(-1, 1) + logp).view(len(alive), width * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # [A, 2k], best first
        tokens = top_ids % vocab  # and the state rows the candidates extend:
        rows = top_ids // vocab + width * torch.arange(len(alive), device=device)[:, None]
        last = limit <= t + 1  # [A]
        stops = (tokens == END) | last[:, None]  # [A, 2k] candidates that do not go on
        ends = stops[:, :k]  # those among the top k end a hypothesis
        slot = torch.where(ends, done[:, None] + ends.cumsum(1) - 1, per - 1)
        into = (alive[:, None] * per + slot).view(-1)  # [A * k]
        fin_steps[into], fin_rows[into] = t + 1, rows[:, :k].reshape(-1)
        fin_last[into], fin_scores[into] = tokens[:, :k].reshape(-1), top_scores[:, :k].reshape(-1)
        done = done + ends.sum(1)
        still = _still_decoding((done < k) & ~last)
        if len(still) == 0:
            break
        # Each sentence still decoding goes on with its first k candidates that do not stop:
        # its 2k best hold at most one end marker per beam (width <= k), so at least k go on.
        pick = (rank + 2 * k * stops).argsort(dim=1)[:, :k]  # [A, k]
        if len(still) < len(alive):  # finished sentences leave the batch
            memory = memory.select(still)
            alive, limit, done, pick, rows, tokens, top_scores = (
                x[still] for x in (alive, limit, done, pick, rows, tokens, top_scores))
        index, prev = rows.gather(1, pick).view(-1), tokens.gather(1, pick).view(-1)  # [A * k]
        scores, state = top_scores.gather(1, pick), state.select(index)
        if rules.needs_history:
            history = torch.cat([history[index], prev[:, None]], 1)
        path.pieces.append(prev)
        path.back.append(index)
        width = k

    fin_steps.view(batch, per)[:, -1] = 0  # the rows of candidates that went on
    pieces, attention = path.trace(fin_steps, fin_rows, fin_last, source)
    ended = _hypotheses(pieces, fin_steps, fin_scores, attention, per)
    rank_of = lambda hyp: normalised_score(hyp, length_penalty, length_penalty_type)  # noqa: E731
    return [sorted(hyps, key=rank_of, reverse=True)[:n_best] for hyps in ended]


class Backpointers:
    """Beam search's record of where each state row came from, step by step.

    At decoder step t the state has rows R_t (R_0: one per sentence). ``pieces[t]``
    and ``back[t]`` ([R_{t+1}]) give each row of step t + 1 the piece it emitted at
    step t and the row of step t it extends; ``attention[t]`` ([R_t, S], if kept)
    the attention weights of step t's rows.
    """

    def __init__(self):
        self.pieces: list[torch.Tensor] = []
        self.back: list[torch.Tensor] = []
        self.attention: list[torch.Tensor | None] = []

    def trace(self, steps: torch.Tensor, rows: torch.Tensor, last: torch.Tensor, source: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Follow the backpointers of hypotheses that ended after ``steps`` [N] decoder
        steps (0: none) extending state row ``rows`` [N] with the piece ``last`` [N]:
        their pieces [N, T] and attention [N, T, S] (or None), all hypotheses at once."""
        most = len(self.attention)
        out = rows.new_zeros((len(rows), most))
        end = steps - 1  # each hypothesis's last step
        out.scatter_(1, end.clamp(min=0)[:, None], last[:, None])
        keep = self.attention[0] is not None
        att = self.attention[0].new_zeros((len(rows), most, source)) if keep else None
        row = rows.clone()
        for t in range(most - 1, -1, -1):
            active = end >= t
            row = torch.where(end == t, rows, row)
            if keep:
                weights = self.attention[t]
                att[:, t] = torch.where(active[:, None], weights[row.clamp(0, len(weights) - 1)], 0)
            if t > 0:  # the piece step t - 1 emitted, and the row of step t - 1
                at = row.clamp(0, len(self.back[t - 1]) - 1)
                out[:, t - 1] = torch.where(active, self.pieces[t - 1][at], out[:, t - 1])
                row = torch.where(active, self.back[t - 1][at], row)
        return out, att
