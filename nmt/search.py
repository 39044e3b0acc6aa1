"""Batched greedy and beam search.

Decoding follows SPEC §3: the first decoder input is the end marker, each
later input is the previous output, and a hypothesis ends when it emits the
end marker (or reaches its maximum length). Every decision about a sentence
depends on that sentence's rows alone, and finished sentences leave the
batch, so a translation does not depend on the batch it is decoded in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nmt.model import Seq2Seq
from nmt.vocab import END


@dataclass
class Hypothesis:
    tokens: list[int]  # output piece ids, without the end marker
    score: float  # sum of log-probabilities (end marker included when emitted)
    attention: torch.Tensor | None = None  # [len(tokens) + 1 or len(tokens), S]


def max_output_lengths(lengths: torch.Tensor, ratio: float) -> list[int]:
    """Most output pieces per sentence: ratio x source pieces (without the end marker) + 5."""
    return [math.ceil(ratio * (n - 1)) + 5 for n in lengths.tolist()]


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor,
                  max_length_ratio: float = 2.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Greedy decoding of a batch. src: [B, S] ids with end marker, lengths: [B]."""
    memory, state = model.encode(src, lengths)
    batch = src.size(0)
    max_lens = max_output_lengths(lengths, max_length_ratio)
    hyps = [Hypothesis([], 0.0) for _ in range(batch)]
    attention: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    alive = list(range(batch))  # original index of each row still decoding
    prev = src.new_full((batch,), END)
    for _ in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        best, prev = logp.max(dim=-1)
        keep = []
        for row, (i, token, score) in enumerate(zip(alive, prev.tolist(), best.tolist())):
            hyps[i].score += score
            if keep_attention:
                attention[i].append(weights[row])
            if token != END:
                hyps[i].tokens.append(token)
                if len(hyps[i].tokens) < max_lens[i]:
                    keep.append(row)
        if len(keep) < len(alive):  # finished sentences leave the batch
            if not keep:
                break
            index = torch.tensor(keep, device=src.device)
            state, memory, prev = state.select(index), memory.select(index), prev[index]
            alive = [alive[row] for row in keep]
    if keep_attention:
        for i, hyp in enumerate(hyps):
            hyp.attention = torch.stack(attention[i]).cpu()
    return hyps


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor, beam_size: int,
                length_penalty: float = 1.0, max_length_ratio: float = 2.0, n_best: int = 1,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search of a batch; returns the ``n_best`` hypotheses of each sentence, best first.

    Beams are ranked by their summed log-probability; finished hypotheses by
    score / length ** length_penalty. A sentence is done when ``beam_size``
    hypotheses have ended (an end marker among the top ``beam_size``
    candidates ends one) or when it reaches its maximum length. With
    beam_size 1 this is exactly greedy search.
    """
    k = beam_size
    memory, state = model.encode(src, lengths)
    batch, device = src.size(0), src.device
    max_lens = max_output_lengths(lengths, max_length_ratio)
    # rows a*width .. a*width+width-1 of the state are the beams of alive[a]; the memory
    # keeps one row per sentence, shared by its beams (see Attention.forward). All beams
    # start identical, so the first step runs one row per sentence (width 1), then k.
    width = 1
    alive = list(range(batch))  # sentences still decoding
    scores = torch.zeros((batch, width), device=device)
    history = src.new_zeros((batch, 0))
    att_history = src.new_zeros((batch, 0, src.size(1)), dtype=torch.float) if keep_attention else None
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    prev = src.new_full((batch,), END)

    def normalised(hyp: Hypothesis) -> float:
        length = len(hyp.tokens) + 1  # the end marker counts as a step
        return hyp.score / length ** length_penalty

    for t in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        vocab = logp.size(1)
        candidates = (scores.view(-1, 1) + logp).view(len(alive), width * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)
        origins = top_ids // vocab  # which beam of the sentence each candidate extends
        tokens = top_ids % vocab
        next_rows, next_tokens, next_scores, still = [], [], [], []
        for a, i in enumerate(alive):
            last = t + 1 >= max_lens[i]
            chosen = 0
            for j, (score, origin, token) in enumerate(zip(top_scores[a].tolist(), origins[a].tolist(),
                                                           tokens[a].tolist())):
                row = a * width + origin
                if token == END or last:
                    if j < k:
                        seq = history[row].tolist() + ([] if token == END else [token])
                        hyp = Hypothesis(seq, score)
                        if keep_attention:
                            hyp.attention = torch.cat([att_history[row], weights[row, None]]).cpu()
                        finished[i].append(hyp)
                    continue
                if chosen < k:
                    next_rows.append(row)
                    next_tokens.append(token)
                    next_scores.append(score)
                    chosen += 1
            if len(finished[i]) < k and not last:
                still.append(a)
            else:  # done: drop the rows it had just chosen
                del next_rows[len(next_rows) - chosen:], next_tokens[len(next_tokens) - chosen:], \
                    next_scores[len(next_scores) - chosen:]
        if not still:
            break
        index = torch.tensor(next_rows, device=device)
        state = state.select(index)
        history = torch.cat([history.index_select(0, index),
                             torch.tensor(next_tokens, device=device)[:, None]], dim=1)
        if keep_attention:
            att_history = torch.cat([att_history.index_select(0, index),
                                     weights.index_select(0, index)[:, None]], dim=1)
        if len(still) < len(alive):  # finished sentences leave the batch
            memory = memory.select(torch.tensor(still, device=device))
            alive = [alive[a] for a in still]
        # Each sentence still decoding chose exactly k candidates: its 2k best hold at most
        # one end marker per beam (width <= k), so at least k of them go on.
        width = k
        scores = torch.tensor(next_scores, device=device).view(len(alive), k)
        prev = index.new_tensor(next_tokens)
    return [sorted(hyps, key=normalised, reverse=True)[:n_best] for hyps in finished]
