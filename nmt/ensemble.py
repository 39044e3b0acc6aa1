"""Ensembles: several models with one vocabulary, decoded as one.

At each step every member reads the same previous output and the ensemble's
log-probabilities are the mean of the members' (each member keeps its own
encoding and decoder state). ``Ensemble`` offers what search needs of a model
(``encode``, ``decode_step``), so greedy and beam search run it unchanged: a
sentence's translation still does not depend on its batch, and an ensemble
of one model is exactly that model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nmt.model import Seq2Seq


@dataclass
class Each:
    """One value per member (their memories or decoder states), selected together."""
    parts: list

    def select(self, index: torch.Tensor) -> "Each":
        return Each([part.select(index) for part in self.parts])

    def head(self, rows: int) -> "Each":
        return Each([part.head(rows) for part in self.parts])


class Ensemble(nn.Module):
    def __init__(self, members: list[Seq2Seq]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def encode(self, src: torch.Tensor, lengths: np.ndarray | torch.Tensor) -> tuple[Each, Each]:
        encoded = [member.encode(src, lengths) for member in self.members]
        return Each([memory for memory, _ in encoded]), Each([state for _, state in encoded])

    def decode_step(self, prev: torch.Tensor, state: Each, memory: Each
                    ) -> tuple[torch.Tensor, Each, torch.Tensor]:
        """prev: [B] -> mean log-probabilities [B, V], the members' states, mean attention [B, S]."""
        steps = [member.decode_step(prev, s, m) for member, s, m in zip(self.members, state.parts, memory.parts)]
        if len(steps) == 1:
            return steps[0][0], Each([steps[0][1]]), steps[0][2]
        # Summed member by member, elementwise: each row's mean is formed in one order
        # whatever the batch (a mean over a stacked dimension need not be).
        logp, weights = steps[0][0], steps[0][2]
        for step in steps[1:]:
            logp, weights = logp + step[0], weights + step[2]
        logp, weights = logp / len(steps), weights / len(steps)
        return logp, Each([step[1] for step in steps]), weights
