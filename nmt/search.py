"""Batched greedy and beam search, and sampling (docs/model.md §3).

A sentence's decisions read its rows alone, the model computes each row alone (nmt.invariant)
and finished sentences leave the batch, so results do not depend, bit for bit, on the batch.
Per step the host learns only which sentences still decode; it reads the results at the end.
Searches take ``never`` (pieces not to emit: Vocab.control_ids) and ``steer`` (nmt.steer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from nmt.config import DecodeConfig
from nmt.data import Batch, without_end_marker
from nmt.steer import Progress, Steering, best_extensions, constrained_candidates
from nmt.vocab import END


class RowSelectable(Protocol):
    """A model's memory or decoder state as search sees it: rows it can keep, nothing more."""

    def select(self, index: torch.Tensor) -> RowSelectable:
        """The rows ``index`` [R'] (to drop finished sentences, to follow beams)."""


@runtime_checkable
class DecodableModel(Protocol):
    """What search needs of a model (``Seq2Seq``, ``Ensemble``, ``GraphedSteps``, ``OnnxModel``):
    memory rows (one per sentence, shared by its beams) and state rows (one per hypothesis)."""

    def encode(self, src: torch.Tensor, lengths: np.ndarray | torch.Tensor
               ) -> tuple[RowSelectable, RowSelectable]:
        """src: [B, S] ids with the end marker, lengths: [B] -> memory, initial state."""

    def decode_step(self, prev: torch.Tensor, state: RowSelectable, memory: RowSelectable
                    ) -> tuple[torch.Tensor, RowSelectable, torch.Tensor]:
        """prev: [R] last output ids -> log-probabilities [R, V], new state, attention [R, S]."""


@dataclass
class Hypothesis:
    tokens: list[int]  # output piece ids, without the end marker
    score: float  # sum of log-probabilities (end marker included when emitted)
    attention: torch.Tensor | None = None  # [steps, S]
    ended: bool = True  # it emitted the end marker (else it was cut at the maximum length)

    @property
    def steps(self) -> int:
        """Decoder steps it took: its pieces, and the end marker if it emitted one."""
        return len(self.tokens) + self.ended


def max_output_lengths(lengths: np.ndarray | torch.Tensor, ratio: float, cap: int = 0) -> list[int]:
    """Most output pieces per sentence: ratio x source pieces (without the end marker) + 5,
    and at most ``cap`` (0: no cap). lengths: [B] with the end marker."""
    most = [math.ceil(ratio * without_end_marker(n)) + 5 for n in lengths.tolist()]
    return [min(m, cap) for m in most] if cap else most


def _hypotheses(tokens: torch.Tensor, steps: torch.Tensor, scores: torch.Tensor,
                attention: torch.Tensor | None, rows_per_sentence: int) -> list[list[Hypothesis]]:
    """Buffers (rows i*n .. i*n+n-1 sentence i's) -> each sentence's hypotheses: the rows where
    ``steps`` [N] ran, their ``tokens`` [N, T] (end marker included), scores [N], attention."""
    attention = None if attention is None else attention.cpu()
    hyps: list[list[Hypothesis]] = [[] for _ in range(len(steps) // rows_per_sentence)]
    for n, (seq, length, score) in enumerate(zip(tokens.tolist(), steps.tolist(), scores.tolist())):
        if length:
            ended = seq[length - 1] == END
            att = None if attention is None else attention[n, :length].clone()
            hyps[n // rows_per_sentence].append(Hypothesis(seq[:length - ended], score, att, ended))
    return hyps


@dataclass(frozen=True)
class Rules:
    """What search may not emit, in any row: the pieces ``never`` (Vocab.control_ids), the end
    marker before ``decode.min_length`` pieces, a piece repeating an n-gram of the hypothesis
    (n = ``decode.no_repeat_ngram_size`` > 0). They get -inf; chosen pieces keep the model's."""
    decode: DecodeConfig
    never: tuple[int, ...] = ()

    @property
    def needs_history(self) -> bool:
        return self.decode.no_repeat_ngram_size > 0

    def apply(self, logp: torch.Tensor, step: int, history: torch.Tensor | None) -> torch.Tensor:
        """logp: [R, V] at decoder step ``step``; history: [R, step] each row's pieces so far."""
        if self.never:  # in place: logp is the step's own new tensor
            logp.index_fill_(1, torch.tensor(self.never, device=logp.device), float("-inf"))
        if step < self.decode.min_length:
            logp = logp.index_fill(1, torch.tensor([END], device=logp.device), float("-inf"))
        n = self.decode.no_repeat_ngram_size
        if n and step >= n:  # each earlier n-gram whose first n - 1 pieces are the last n - 1
            grams = history.unfold(1, n, 1)  # [R, step - n + 1, n]
            same = (grams[:, :, :-1] == history[:, None, step - n + 1:]).all(2)
            banned = torch.zeros_like(logp).scatter_add_(1, grams[:, :, -1], same.to(logp.dtype))
            logp = logp.masked_fill(banned > 0, float("-inf"))
        return logp


def _ruled(logp: torch.Tensor, rules: Rules, step: int, history: torch.Tensor | None,
           steer: Steering | None, sentence: torch.Tensor) -> torch.Tensor:
    """logp [R, V] ruled, then each row's prefix piece forced at the model's log-probability
    (whatever the rules say). sentence: [R] each row's in ``steer``."""
    forced = None if steer is None else steer.prefix_pieces(sentence, step)
    raw = None if forced is None else logp.gather(1, forced[:, None])  # before the rules
    logp = rules.apply(logp, step, history)
    return logp if forced is None else steer.force_prefix(logp, raw, sentence, step)


def normalised_score(hyp: Hypothesis, length_penalty: float, kind: str = "length") -> float:
    """A finished hypothesis's rank: score / length ** alpha ("length") or score / ((5 + length)
    / 6) ** alpha ("gnmt", Wu et al. 2016); an emitted end marker counts as a step."""
    length = hyp.steps
    return hyp.score / (length if kind == "length" else (5 + length) / 6) ** length_penalty


def sample_pieces(logp: torch.Tensor, decode: DecodeConfig, seeds: list[int], step: int
                  ) -> torch.Tensor:
    """logp: [A, V], a seed per row -> sampled pieces [A] (Gumbel-max) at ``decode.temperature``,
    cut to the ``top_k`` best and the fewest reaching ``top_p`` (0 and 1: no cut). Each row's noise
    is seeded by its seed and the step, so a sample never depends on the rest of the batch."""
    scores = logp.float() / decode.temperature
    if 0 < decode.top_k < scores.size(1):
        kth = scores.topk(decode.top_k, dim=1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if decode.top_p < 1.0:
        ordered, order = scores.sort(dim=1, descending=True)
        probs = ordered.softmax(dim=1)
        beyond = probs.cumsum(dim=1) - probs >= decode.top_p  # those before reach top_p
        scores = scores.masked_fill(beyond.scatter(1, order, beyond), float("-inf"))
    noise = torch.stack([torch.rand(scores.size(1), device=scores.device, generator=torch.Generator(
        scores.device).manual_seed((seed + step * 0x9E3779B97F4A7C15) % 2**63)) for seed in seeds])
    return (scores - torch.log(-torch.log(noise.clamp_min(1e-12)))).argmax(dim=1)


# (logp [A, V], sentence of each row [A], step) -> chosen pieces [A], their log-probabilities [A]
Choice = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def greedy_search(model: DecodableModel, batch: Batch, decode: DecodeConfig | None = None,
                  never: tuple[int, ...] = (), keep_attention: bool = False,
                  steer: Steering | None = None) -> list[Hypothesis]:
    """Each sentence's most probable piece at each step."""
    def most_probable(logp: torch.Tensor, alive: torch.Tensor, step: int):
        best, piece = logp.max(dim=-1)
        return piece, best

    return _one_per_sentence(model, batch, decode or DecodeConfig(), never, keep_attention,
                             most_probable, steer)


@torch.no_grad()
def sample_search(model: DecodableModel, batch: Batch, decode: DecodeConfig, seeds: list[int],
                  never: tuple[int, ...] = (), keep_attention: bool = False,
                  steer: Steering | None = None) -> list[Hypothesis]:
    """One random translation per sentence, sentence i's drawn with ``seeds[i]``."""
    def drawn(logp: torch.Tensor, alive: torch.Tensor, step: int):
        piece = sample_pieces(logp, decode, [seeds[i] for i in alive.tolist()], step)
        return piece, logp.gather(1, piece[:, None]).squeeze(1)

    return _one_per_sentence(model, batch, decode, never, keep_attention, drawn, steer)


def _one_per_sentence(model: DecodableModel, batch: Batch, decode: DecodeConfig,
                      never: tuple[int, ...], keep_attention: bool, choose: Choice,
                      steer: Steering | None) -> list[Hypothesis]:
    """One hypothesis per sentence, its next piece ``choose``-n; scores: the model's."""
    if steer is not None and steer.constrained:
        raise ValueError("constraints need beam search")
    rules, src = Rules(decode, never), batch.src
    memory, state = model.encode(src, batch.src_lengths)
    sentences, source = src.shape
    max_lens = max_output_lengths(batch.src_lengths, decode.max_length_ratio, decode.max_length)
    most = max(max_lens)
    # Per sentence: pieces [B, T], steps run [B], score [B] (float32 terms summed in float64, as
    # Python floats would sum them), attention [B, T, S] (made at the first step: any memory).
    out = src.new_zeros((sentences, most))
    ran = src.new_zeros(sentences)
    total = torch.zeros(sentences, dtype=torch.float64, device=src.device)
    att = None
    alive = torch.arange(sentences, device=src.device)  # [A] sentence of each row still decoding
    limit = torch.tensor(max_lens, device=src.device)  # [A] its maximum output length
    prev = src.new_full((sentences,), END)
    for t in range(most):
        logp, state, weights = model.decode_step(prev, state, memory)
        logp = _ruled(logp, rules, t, out[alive, :t] if rules.needs_history else None, steer, alive)
        prev, best = choose(logp, alive, t)
        out[alive, t] = prev
        ran[alive] = t + 1
        total[alive] += best.double()
        if keep_attention:
            if att is None:
                att = weights.new_zeros((sentences, most, source))
            att[alive, t] = weights
        keep = ((prev != END) & (limit > t + 1)).nonzero().squeeze(1)  # the step's one transfer
        if len(keep) == 0:
            break
        if len(keep) < len(alive):  # finished sentences leave the batch
            state, memory = state.select(keep), memory.select(keep)
            prev, alive, limit = prev[keep], alive[keep], limit[keep]
    return [hyps[0] for hyps in _hypotheses(out, ran, total, att, 1)]


@torch.no_grad()
def beam_search(model: DecodableModel, batch: Batch, decode: DecodeConfig,
                never: tuple[int, ...] = (), keep_attention: bool = False,
                steer: Steering | None = None) -> list[list[Hypothesis]]:
    """Each sentence's ``decode.n_best`` best of ``decode.beam_size`` (k) beams. Beams rank by
    summed log-probability, finished hypotheses by ``normalised_score`` (ties: in the order they
    finished); a sentence is done when k have ended or at its maximum length. k 1 is greedy."""
    k, rules, src = decode.beam_size, Rules(decode, never), batch.src
    memory, state = model.encode(src, batch.src_lengths)
    sentences, source = src.shape
    max_lens = max_output_lengths(batch.src_lengths, decode.max_length_ratio, decode.max_length)
    # State rows a*width .. a*width+width-1 are sentence alive[a]'s beams, sharing its memory row
    # (nmt.core.attend). The beams start identical: one row per sentence (width 1), then k.
    width = 1
    alive = torch.arange(sentences, device=src.device)  # [A] sentence of each memory row
    limit = torch.tensor(max_lens, device=src.device)  # [A] its maximum output length
    done = torch.zeros_like(alive)  # [A] its finished hypotheses so far
    scores = torch.zeros((sentences, width), device=src.device)  # [A, width] summed log-probs
    path, finished, steered = Backpointers(), _Finished(sentences, k, src), _Steered(steer)
    rank = torch.arange(2 * k, device=src.device)
    prev = src.new_full((sentences,), END)
    history = src.new_zeros((sentences, 0))  # [R, t] each row's pieces, if the rules need them
    for t in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        path.attention.append(weights if keep_attention else None)
        top_scores, tokens, rows = steered.candidates(scores, logp, width, 2 * k, rules, t,
                                                      history, alive)
        last = limit <= t + 1  # [A]
        stops = (tokens == END) | last[:, None]  # [A, 2k] candidates that do not go on
        done = finished.record(alive, done, *steered.ends(stops[:, :k], top_scores[:, :k], alive),
                               t + 1, rows, tokens, top_scores)
        decoding = ((done < k) & ~last).nonzero().squeeze(1)  # the step's one transfer
        if len(decoding) == 0:
            break
        # Each sentence still decoding goes on with its first k candidates that do not stop:
        # its 2k best hold at most one end marker per beam (width <= k), so at least k go on.
        pick = (rank + 2 * k * stops).argsort(dim=1)[:, :k]  # [A, k]
        if len(decoding) < len(alive):  # finished sentences leave the batch
            steered.keep(decoding)
            memory = memory.select(decoding)
            alive, limit, done, pick, rows, tokens, top_scores = (
                x[decoding] for x in (alive, limit, done, pick, rows, tokens, top_scores))
        index, prev, scores = (x.gather(1, pick) for x in (rows, tokens, top_scores))
        index, prev = index.view(-1), prev.view(-1)  # [A * k]
        state = state.select(index)
        steered.follow(pick)
        if rules.needs_history:
            history = torch.cat([history[index], prev[:, None]], 1)
        path.extend(prev, index)
        width = k
    return finished.hypotheses(path, source, decode)


class _Steered:
    """Beam search's steering (``nmt.steer``): prefixes forced; with constraints, the end marker
    banned while a phrase is unmet and the beam shared out among banks. Beams at -inf never end."""

    def __init__(self, steer: Steering | None):
        self.steer = steer
        constrained = steer is not None and steer.constrained
        self.progress = Progress.start(steer) if constrained else None  # the rows' phrases
        self.moved: Progress | None = None  # the candidates' [A, 2k]

    def candidates(self, scores: torch.Tensor, logp: torch.Tensor, width: int, count: int,
                   rules: Rules, step: int, history: torch.Tensor, alive: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``best_extensions`` after the rules and steering; alive: [A] each beams' sentence."""
        steer = self.steer
        row_sentence = alive.repeat_interleave(width) if steer is not None else None
        logp = _ruled(logp, rules, step, history, steer, row_sentence)
        if self.progress is None:
            return best_extensions(scores, logp, width, count)
        unmet = self.progress.bank < steer.total[row_sentence]
        logp[:, END] = logp[:, END].masked_fill(unmet, float("-inf"))
        *chosen, self.moved = constrained_candidates(scores, logp, width, count, steer,
                                                     row_sentence, self.progress)
        return tuple(chosen)

    def ends(self, stops: torch.Tensor, scores: torch.Tensor, alive: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Of the top k candidates [A, k]: those that end a hypothesis (stops with finite scores),
        and whether each meets its phrases (None: no constraints)."""
        if self.steer is None:
            return stops, None
        ends = stops & (scores > float("-inf"))
        return ends, None if self.moved is None else self.moved.bank[:, :stops.size(1)] == \
            self.steer.total[alive][:, None]

    def keep(self, decoding: torch.Tensor) -> None:
        if self.moved is not None:
            self.moved = self.moved.select(decoding)

    def follow(self, pick: torch.Tensor) -> None:
        """The rows go on as the candidates ``pick`` [A, k]."""
        if self.moved is not None:
            self.progress = self.moved.take(pick).flat()


class _Finished:
    """Beam search's finished hypotheses in the order they ended, sentence i's in its 2k rows (at
    most 2k - 1 used; the last takes the writes of candidates that go on). Per row: decoder steps
    run (0: empty), the state row it extends at its last step, its last piece, its score."""

    def __init__(self, sentences: int, beam_size: int, src: torch.Tensor):
        self.beam_size = beam_size
        self.slots = 2 * beam_size
        self.steps, self.rows, self.last = (src.new_zeros(sentences * self.slots) for _ in range(3))
        self.scores = torch.zeros(sentences * self.slots, device=src.device)
        self.complete: torch.Tensor | None = None  # with constraints: whether each meets them

    def record(self, alive: torch.Tensor, done: torch.Tensor, ends: torch.Tensor,
               complete: torch.Tensor | None, steps: int, rows: torch.Tensor, tokens: torch.Tensor,
               scores: torch.Tensor) -> torch.Tensor:
        """Keep the top-k candidates that ``ends`` [A, k] (of [A, 2k]; ``complete``: meeting the
        constraints) of sentences ``alive`` [A] with ``done`` [A] finished -> the count after."""
        k = self.beam_size
        slot = torch.where(ends, done[:, None] + ends.cumsum(1) - 1, self.slots - 1)
        into = (alive[:, None] * self.slots + slot).view(-1)  # [A * k]
        self.steps[into] = steps
        for buffer, value in ((self.rows, rows), (self.last, tokens), (self.scores, scores)):
            buffer[into] = value[:, :k].reshape(-1)
        if complete is not None:
            if self.complete is None:
                self.complete = torch.ones_like(self.steps, dtype=torch.bool)
            self.complete[into] = complete.reshape(-1)
        return done + ends.sum(1)

    def hypotheses(self, path: Backpointers, source: int, decode: DecodeConfig
                   ) -> list[list[Hypothesis]]:
        """Each sentence's ``decode.n_best`` finished hypotheses, best first (complete first)."""
        self.steps.view(-1, self.slots)[:, -1] = 0  # the rows of candidates that went on
        pieces, attention = path.trace(self.steps, self.rows, self.last, source)
        ended = _hypotheses(pieces, self.steps, self.scores, attention, self.slots)
        complete = [[True] * len(hyps) for hyps in ended]
        if self.complete is not None:  # the rows _hypotheses keeps: those where steps ran
            complete = [[meets for meets, steps in zip(row, ran) if steps] for row, ran in
                        zip(self.complete.view(-1, self.slots).tolist(),
                            self.steps.view(-1, self.slots).tolist())]

        def rank(pair: tuple[bool, Hypothesis]) -> tuple[bool, float]:  # constraints met first
            meets, hyp = pair
            return meets, normalised_score(hyp, decode.length_penalty, decode.length_penalty_type)

        return [[hyp for _, hyp in sorted(zip(meets, hyps), key=rank, reverse=True)][:decode.n_best]
                for hyps, meets in zip(ended, complete)]


class Backpointers:
    """Where each state row came from: ``pieces[t]`` and ``back[t]`` [R_{t+1}] give each row of
    step t + 1 the piece it emitted at step t and the row R_t it extends (R_0: one per sentence);
    ``attention[t]`` [R_t, S] (if kept) step t's attention weights."""

    def __init__(self):
        self.pieces: list[torch.Tensor] = []
        self.back: list[torch.Tensor] = []
        self.attention: list[torch.Tensor | None] = []

    def extend(self, pieces: torch.Tensor, back: torch.Tensor) -> None:
        self.pieces.append(pieces)
        self.back.append(back)

    def trace(self, steps: torch.Tensor, rows: torch.Tensor, last: torch.Tensor, source: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pieces [N, T] and attention [N, T, S] (or None) of hypotheses that ended after
        ``steps`` [N] decoder steps (0: none) extending state row ``rows`` [N] with ``last`` [N]."""
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
