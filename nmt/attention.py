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
            query: [B * k, Q], k >= 1 consecutive queries per sentence (beam
                search's k beams share their sentence's keys and values, which
                are read once per sentence instead of once per beam);
            keys: [B, S, Q] from ``project_keys``; values: [B, S, K] encoder
                outputs; mask: [B, S], True at real positions.
        Returns:
            context [B * k, K] and weights [B * k, S] (zero on padding, rows sum to 1).
        """
        rows, sentences = query.size(0), keys.size(0)
        q = query.view(sentences, rows // sentences, -1)  # [B, k, Q]
        if self.kind == "mlp":
            hidden = torch.tanh(keys.unsqueeze(1) + self.query_proj(q).unsqueeze(2))  # [B, k, S, Q]
            scores = self.v(hidden).squeeze(3)
        else:
            scores = torch.bmm(q, keys.transpose(1, 2))  # [B, k, S]
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, values)  # [B, k, K]
        return context.view(rows, -1), weights.view(rows, -1)
