"""Attention over the encoder outputs: Luong dot / general, Bahdanau MLP."""
from __future__ import annotations

import torch
from torch import nn

from nmt import core


class Attention(nn.Module):
    """Scores a decoder query against every source position: holds the weights, the scores are
    ``nmt.core.attend``'s. What depends only on the source (W k) is computed once per sentence
    by ``project_keys``, not at every decoder step."""

    def __init__(self, kind: str, query_size: int, key_size: int):
        super().__init__()
        self.kind = kind
        if kind == "dot":
            if query_size != key_size:
                raise ValueError("dot attention needs equal sizes, "
                                 f"got {query_size} and {key_size}")
        elif kind == "general":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)
        elif kind == "mlp":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)
            self.query_proj = nn.Linear(query_size, query_size)
            self.v = nn.Linear(query_size, 1, bias=False)
        else:
            raise ValueError(f"unknown attention {kind!r}")

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """[B, S, key_size] -> keys [B, S, query_size] (training's kernels)."""
        return core.project_keys(core.BATCHED, self, memory)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``nmt.core.attend`` with training's kernels: query [B * k, Q], keys [B, S, Q],
        values [B, S, K], mask [B, S] -> context [B * k, K], weights [B * k, S]."""
        return core.attend(core.BATCHED, self, query, core.Memory(values, keys, mask))
