"""Attention over the encoder outputs: Luong dot / general, Bahdanau MLP."""
from __future__ import annotations

import torch
from torch import nn


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

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """[B, S, key_size] -> keys [B, S, query_size]."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend.

        Args:
            query: [B, Q]; keys: [B, S, Q] from ``project_keys``;
            values: [B, S, K] encoder outputs; mask: [B, S], True at real positions.
        Returns:
            context [B, K] and weights [B, S] (zero on padding, rows sum to 1).
        """
        if self.kind == "mlp":
            scores = self.v(torch.tanh(keys + self.query_proj(query).unsqueeze(1))).squeeze(2)
        else:
            scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)
        return context, weights
