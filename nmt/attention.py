"""Attention over the encoder outputs: Luong dot / general, Bahdanau MLP."""
from __future__ import annotations

import torch
from torch import nn

from nmt import invariant


class Attention(nn.Module):
    """Scores a decoder query against every source position.

    dot:     score = q . k                      (needs query and key of one size)
    general: score = q . (W k)                  (Luong's bilinear form)
    mlp:     score = v . tanh(W_q q + W_k k)    (Bahdanau's additive form)

    The parts that depend only on the source (W k) are computed once per
    sentence by ``project_keys`` rather than at every decoder step.
    """

    def __init__(self, kind: str, query_size: int, key_size: int):
        super().__init__()
        self.kind = kind
        if kind == "dot":
            if query_size != key_size:
                raise ValueError(f"dot attention needs equal sizes, got {query_size} and {key_size}")
        elif kind == "general":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)
        elif kind == "mlp":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)
            self.query_proj = nn.Linear(query_size, query_size)
            self.v = nn.Linear(query_size, 1, bias=False)
        else:
            raise ValueError(f"unknown attention {kind!r}")

    def project_keys(self, memory: torch.Tensor, batch_invariant: bool = False) -> torch.Tensor:
        """[B, S, key_size] -> keys [B, S, query_size]."""
        if self.kind == "dot":
            return memory
        return invariant.rows(self.key_proj, memory) if batch_invariant else self.key_proj(memory)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor, batch_invariant: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend. ``batch_invariant``: computed so that a sentence's result does not depend on
        the rest of the batch (``nmt.invariant``; decoding), else with batched products (training).

        Args:
            query: [B * k, Q], k >= 1 consecutive queries per sentence (beam
                search's k beams share their sentence's keys and values, which
                are read once per sentence instead of once per beam);
            keys: [B, S, Q] from ``project_keys``; values: [B, S, K] encoder
                outputs; mask: [B, S], True at real positions.
        Returns:
            context [B * k, K] and weights [B * k, S] (zero on padding, rows sum to 1).
        """
        rows = query.size(0)
        sentences = keys.size(0)
        q = query.view(sentences, rows // sentences, -1)  # [B, k, Q]
        if batch_invariant:
            context, weights = invariant.by_sentences(self._attend_invariant, q, keys, values, mask)
            return context.view(rows, -1), weights.view(rows, -1)
        if self.kind == "mlp":
            hidden = torch.tanh(keys.unsqueeze(1) + self.query_proj(q).unsqueeze(2))  # [B, k, S, Q]
            scores = self.v(hidden).squeeze(3)
        else:
            scores = torch.bmm(q, keys.transpose(1, 2))  # [B, k, S]
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, values)  # [B, k, K]
        return context.view(rows, -1), weights.view(rows, -1)

    def _attend_invariant(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [B, k, Q] -> context [B, k, K], weights [B, k, S], each sentence's from its own rows."""
        if self.kind == "mlp":
            hidden = torch.tanh(keys.unsqueeze(1) + invariant.rows(self.query_proj, q).unsqueeze(2))
            # A sum over Q alone (int8: an exact integer product).
            scores = ((hidden * self.v.weight[0]).sum(-1) if isinstance(self.v, nn.Linear)
                      else self.v(hidden).squeeze(-1))  # [B, k, S]
        else:
            scores = invariant.dot(q, keys)
        return invariant.attend(scores, values, mask)
