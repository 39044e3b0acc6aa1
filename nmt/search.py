"""Batched greedy and beam search.

Decoding follows SPEC §3: the first decoder input is the end marker, each
later input is the previous output, and a hypothesis ends when it emits the
end marker (or reaches its maximum length). Every decision about a sentence
depends on that sentence's rows alone, and finished sentences leave the
batch, so a translation does not depend on the batch it is decoded in.

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
    attention: torch.Tensor | None = None  # [len(tokens) + 1 or len(tokens), S]


def max_output_lengths(lengths: np.ndarray | torch.Tensor, ratio: float) -> list[int]:
    """Most output pieces per sentence: ratio x source pieces (without the end marker) + 5."""
    return [math.ceil(ratio * (n - 1)) + 5 for n in lengths.tolist()]


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
            seq = seq[:length - 1] if seq[length - 1] == END else seq[:length]
            att = None if attention is None else attention[n, :length].clone()
            hyps[n // per].append(Hypothesis(seq, score, att))
    return hyps


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: torch.Tensor, lengths: np.ndarray | torch.Tensor,
                  max_length_ratio: float = 2.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Greedy decoding of a batch. src: [B, S] ids with end marker, lengths: [B]."""
    memory, state = model.encode(src, lengths)
    (batch, source), device = src.shape, src.device
    max_lens = max_output_lengths(lengths, max_length_ratio)
    # Per sentence: its pieces [B, T], steps run [B], score [B] (float32 terms summed in
    # float64, as Python floats would sum them) and attention [B, T, S].
    out, ran = src.new_zeros((batch, max(max_lens))), src.new_zeros(batch)
    total = torch.zeros(batch, dtype=torch.float64, device=device)
    att = memory.values.new_zeros((batch, max(max_lens), source)) if keep_attention else None
    alive = torch.arange(batch, device=device)  # [A] sentence of each row still decoding
    limit = torch.tensor(max_lens, device=device)  # [A] its maximum output length
    prev = src.new_full((batch,), END)
    for t in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        best, prev = logp.max(dim=-1)
        out[alive, t], ran[alive] = prev, t + 1
        total[alive] += best.double()
        if keep_attention:
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
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search of a batch; returns the ``n_best`` hypotheses of each sentence, best first.

    Beams are ranked by their summed log-probability; finished hypotheses by
    score / length ** length_penalty (ties: in the order they finished). A
    sentence is done when ``beam_size`` hypotheses have ended (an end marker
    among the top ``beam_size`` candidates ends one) or when it reaches its
    maximum length (all top ``beam_size`` candidates end). With beam_size 1
    this is exactly greedy search.
    """
    k, per = beam_size, 2 * beam_size
    memory, state = model.encode(src, lengths)
    (batch, source), device = src.shape, src.device
    max_lens = max_output_lengths(lengths, max_length_ratio)
    # Rows a*width .. a*width+width-1 of the state are the beams of sentence alive[a]; the
    # memory keeps one row per sentence, shared by its beams (see Attention.forward). All
    # beams start identical, so the first step runs one row per sentence (width 1), then k.
    width = 1
    alive = torch.arange(batch, device=device)  # [A] sentence of each memory row
    limit = torch.tensor(max_lens, device=device)  # [A] its maximum output length
    done = torch.zeros_like(alive)  # [A] its finished hypotheses so far
    scores = torch.zeros((batch, width), device=device)  # [A, width] beams' summed log-probs
    history = src.new_zeros((batch, 0))  # [A * width, t] the beams' pieces
    att_history = memory.values.new_zeros((batch, 0, source))  # [A * width, t, S] if kept
    # Finished hypotheses in the order they ended, sentence i's in rows i * per + j: fewer
    # than k before its last step, which ends at most k more, fill 2k - 1 rows; its last
    # row takes the writes of top-k candidates that go on. Pieces [B * 2k, T] (the end
    # marker last if emitted), decoder steps run [B * 2k] (0: empty), scores [B * 2k].
    most = max(max_lens)
    fin_tokens, fin_steps = src.new_zeros((batch * per, most)), src.new_zeros(batch * per)
    fin_scores = torch.zeros(batch * per, device=device)
    fin_att = memory.values.new_zeros((batch * per, most, source)) if keep_attention else None
    rank = torch.arange(2 * k, device=device)
    prev = src.new_full((batch,), END)
    for t in range(most):
        logp, state, weights = model.decode_step(prev, state, memory)
        vocab = logp.size(1)
        candidates = (scores.view(-1, 1) + logp).view(len(alive), width * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # [A, 2k], best first
        tokens = top_ids % vocab  # and the state rows the candidates extend:
        rows = top_ids // vocab + width * torch.arange(len(alive), device=device)[:, None]
        last = limit <= t + 1  # [A]
        stops = (tokens == END) | last[:, None]  # [A, 2k] candidates that do not go on
        ends = stops[:, :k]  # those among the top k end a hypothesis
        slot = torch.where(ends, done[:, None] + ends.cumsum(1) - 1, per - 1)
        into, origin = (alive[:, None] * per + slot).view(-1), rows[:, :k].reshape(-1)  # [A * k]
        fin_tokens[into, :t + 1] = torch.cat([history[origin], tokens[:, :k].reshape(-1, 1)], 1)
        fin_steps[into], fin_scores[into] = t + 1, top_scores[:, :k].reshape(-1)
        if fin_att is not None:
            fin_att[into, :t + 1] = torch.cat([att_history[origin], weights[origin, None]], 1)
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
        history = torch.cat([history[index], prev[:, None]], 1)
        if fin_att is not None:
            att_history = torch.cat([att_history[index], weights[index, None]], 1)
        width = k

    def normalised(hyp: Hypothesis) -> float:
        length = len(hyp.tokens) + 1  # the end marker counts as a step
        return hyp.score / length ** length_penalty

    fin_steps.view(batch, per)[:, -1] = 0  # the rows of candidates that went on
    ended = _hypotheses(fin_tokens, fin_steps, fin_scores, fin_att, per)
    return [sorted(hyps, key=normalised, reverse=True)[:n_best] for hyps in ended]
