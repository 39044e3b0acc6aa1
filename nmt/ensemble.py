"""Ensembles: several models with one vocabulary, decoded as one ``DecodableModel``.

Every member reads the same previous output (keeping its own encoding and state); the
log-probabilities are the members' mean. An ensemble of one model is exactly that model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nmt.model import Seq2Seq


@dataclass
class PerMember:
    """One value per member (their memories or decoder states), selected together."""
    parts: list

    def select(self, index: torch.Tensor) -> PerMember:
        return PerMember([part.select(index) for part in self.parts])

    def head(self, rows: int) -> PerMember:
        return PerMember([part.head(rows) for part in self.parts])


class Ensemble(nn.Module):
    def __init__(self, members: list[Seq2Seq]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def encode(self, src: torch.Tensor, lengths: np.ndarray | torch.Tensor
               ) -> tuple[PerMember, PerMember]:
        """src: [B, S], lengths: [B] -> the members' memories and initial states."""
        memories, states = zip(*(member.encode(src, lengths) for member in self.members))
        return PerMember(list(memories)), PerMember(list(states))

    def decode_step(self, prev: torch.Tensor, state: PerMember, memory: PerMember
                    ) -> tuple[torch.Tensor, PerMember, torch.Tensor]:
        """prev: [B] -> mean log-probabilities [B, V], the members' states, mean attention."""
        steps = [member.decode_step(prev, member_state, member_memory)
                 for member, member_state, member_memory
                 in zip(self.members, state.parts, memory.parts)]
        # Summed member by member, elementwise: each row's mean is formed in one order
        # whatever the batch (a mean over a stacked dimension need not be). One member: x / 1.
        logp, _, weights = steps[0]
        for step_logp, _, step_weights in steps[1:]:
            logp, weights = logp + step_logp, weights + step_weights
        return logp / len(steps), PerMember([step[1] for step in steps]), weights / len(steps)
