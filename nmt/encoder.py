"""The recurrent encoder: deep, optionally bidirectional, packed (SPEC §1, 4-6)."""
from __future__ import annotations

import torch
from torch import nn

from nmt.dropout import Dropout
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # nn.RNN is the plain tanh cell


class Encoder(nn.Module):
    """L stacked recurrent layers; each layer's outputs are the next layer's inputs.

    Each layer is its own module (one direction, or two whose outputs are
    concatenated), so dropout sits exactly where SPEC §6 puts it: on the input
    into layer 1 and between layers within a time step -- never on the state
    carried from step t-1 to step t. Sequences are packed, so padding never
    changes a result and the backward direction starts at each sentence's end.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int,
                 bidirectional: bool = True, dropout: float = 0.0):
        super().__init__()
        self.cell = cell
        self.directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.directions
        self.layers = nn.ModuleList(
            RNN_TYPES[cell](input_size if k == 0 else self.output_size, hidden_size,
                            batch_first=True, bidirectional=bidirectional)
            for k in range(num_layers))
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Encode a padded batch.

        Args:
            x: [B, S, input_size] inputs (embedded source).
            lengths: [B] true lengths (CPU tensor).
        Returns:
            outputs: [B, S, output_size], the top layer's states, directions
                concatenated; zero at padded positions.
            finals: per layer, (h, c) of the last step, each [B, output_size]
                with directions concatenated (c is None for GRU and RNN).
        """
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        finals = []
        for layer in self.layers:
            packed = PackedSequence(self.dropout(packed.data), packed.batch_sizes,
                                    packed.sorted_indices, packed.unsorted_indices)
            packed, state = layer(packed)
            h, c = state if isinstance(state, tuple) else (state, None)
            finals.append((self._join(h), None if c is None else self._join(c)))
        outputs, _ = pad_packed_sequence(packed, batch_first=True, total_length=x.size(1))
        return outputs, finals

    def _join(self, state: torch.Tensor) -> torch.Tensor:
        """[directions, B, H] -> [B, directions * H] (forward first, then backward)."""
        return torch.cat(list(state), dim=-1)
