"""The recurrent encoder: deep, optionally bidirectional, packed (docs/model.md §1, 4-6)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from nmt.dropout import Dropout

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # nn.RNN is the plain tanh cell


class Encoder(nn.Module):
    """L stacked recurrent layers, each its own module (one direction, or two concatenated), so
    dropout sits where docs/model.md §6 puts it: on the input into layer 1 and between layers,
    never on the state carried between steps. Sequences are packed: padding never changes a
    result, and the backward direction starts at each sentence's end."""

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

    def forward(self, x: torch.Tensor, lengths: np.ndarray | torch.Tensor
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """x: [B, S, input_size] embedded source, lengths: [B] (best a host array: packing is
        planned there) -> outputs [B, S, output_size], the top layer's states (directions
        concatenated, zero at padding), and per layer the last step's (h, c), each
        [B, output_size] (c None for GRU and RNN)."""
        batch, width = x.shape[:2]
        sizes, order, unsorted, index = (torch.from_numpy(a) for a in packing(lengths, width))
        if x.is_cuda:  # copied without waiting: packing never holds up the host
            order, unsorted, index = (t.pin_memory().to(x.device, non_blocking=True)
                                      for t in (order, unsorted, index))
        data = x.reshape(batch * width, -1).index_select(0, index)  # [N, input_size] packed rows
        finals = []
        for layer in self.layers:
            # Zero initial states given here: left to nn.LSTM they are sized by reading
            # batch_sizes[0], a host read that a training step must not make.
            zeros = x.new_zeros(self.directions, batch, layer.hidden_size)
            packed, state = layer(PackedSequence(self.dropout(data), sizes, order, unsorted),
                                  (zeros, zeros) if self.cell == "lstm" else zeros)
            data = packed.data
            h, c = state if isinstance(state, tuple) else (state, None)
            finals.append((self._join(h), None if c is None else self._join(c)))
        outputs = data.new_zeros(batch * width, data.size(1)).index_copy(0, index, data)
        return outputs.view(batch, width, -1), finals

    def _join(self, state: torch.Tensor) -> torch.Tensor:
        """[directions, B, H] -> [B, directions * H] (forward first, then backward)."""
        return torch.cat(list(state), dim=-1)


def packing(lengths: np.ndarray | torch.Tensor, width: int) -> tuple[np.ndarray, ...]:
    """What ``pack_padded_sequence`` computes, on the host from host lengths, so that no
    packing reads from the device (torch's own copy indices to the device and back): the
    packed batch's batch_sizes [S'], sorted_indices and unsorted_indices [B] (longest first),
    and each packed row's position b * width + t in the flattened [B, width] batch ([N],
    time-major, as nn.LSTM reads packed data)."""
    lengths = lengths.cpu().numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    sizes = (lengths[None, :] > np.arange(lengths.max())[:, None]).sum(1)
    rank = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    steps = np.repeat(np.arange(len(sizes)), sizes)
    return sizes, order, np.argsort(order), order[rank] * width + steps
