"""Decoding under CUDA graphs (``decode.cuda_graphs``): a decoder step replayed, not launched.

A step is hundreds of small kernels, at decoding's batch sizes mostly launch time.
``GraphedSteps`` (a ``DecodableModel``) captures the step once per bucket of (sentences, beams,
source length) and replays it, rows and source padded up to the bucket; as rows do not mix
(``nmt.invariant``) it gives what an eager step does. Off CUDA the same code runs eagerly.
"""
from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import torch

from nmt.invariant import ROW_BLOCK
from nmt.search import DecodableModel

SOURCE_BLOCK = 8  # source lengths are padded to a multiple of 8 at least


def bucket(n: int, least: int) -> int:
    """n rounded up to a multiple of ``least`` and of a quarter of n's octave: about four
    sizes per doubling, so at most a quarter more rows than needed (and few graphs)."""
    step = max(least, 1 << max(0, n.bit_length() - 3))
    return -(-n // step) * step


def _map(fn, obj):
    """``obj`` (a tensor, None, a list or dataclass of these) with ``fn`` applied to tensors."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if obj is None:
        return None
    if isinstance(obj, list):
        return [_map(fn, part) for part in obj]
    return type(obj)(*(_map(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj)))


def _leaves(obj) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map(found.append, obj)
    return found


class _Rows:
    """The state rows steps read, in fixed buffers (a replay reads them there): a first batch's
    rows repeated, so rows past a later batch's hold real (stale: harmless) values."""

    def __init__(self, prev: torch.Tensor, state, rows: int):
        index = torch.arange(rows, device=prev.device) % len(prev)
        self.prev = prev[index]
        self.state = state.select(index)


class _Source:
    """The memory steps read, kept as ``_Rows``: ``sentences`` rows padded to ``source``
    positions (zeros past a batch's length: the mask's False)."""

    def __init__(self, memory, sentences: int, source: int):
        memory = memory.select(torch.arange(sentences, device=_leaves(memory)[0].device)
                               % _leaves(memory)[0].size(0))

        def padded(t: torch.Tensor) -> torch.Tensor:  # [A, S', ...] -> [A, source, ...]
            return torch.cat([t, t.new_zeros(t.size(0), source - t.size(1), *t.shape[2:])], 1)

        self.memory = _map(padded, memory)
        self.memory_of = lambda: None  # the caller's memory last copied in

    def load(self, memory) -> None:
        if self.memory_of() is not memory:
            for static, new in zip(_leaves(self.memory), _leaves(memory)):
                static[:len(new), :new.size(1)].copy_(new)
                static[:len(new), new.size(1):].zero_()
            self.memory_of = weakref.ref(memory)


class _Step:
    """One bucket's step over its buffers' first rows: a CUDA graph, or (off CUDA) eager."""

    def __init__(self, model, rows: _Rows, source: _Source, size: tuple[int, int], pool):
        self.rows = rows  # kept alive while this step is
        self.source = source
        self.args = (rows.prev[:size[0]], rows.state.head(size[0]),
                     _map(lambda t: t[:size[1]], source.memory))
        self.graph = None
        if rows.prev.is_cuda:
            side = torch.cuda.Stream()  # warm-up off the main stream, as capture requires
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    model.decode_step(*self.args)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = model.decode_step(*self.args)

    def run(self, model, prev: torch.Tensor, state, memory):
        """Copy a batch into the buffers (its rows first) and run the step on them."""
        self.args[0][:len(prev)].copy_(prev)
        for static, new in zip(_leaves(self.args[1].head(len(prev))), _leaves(state)):
            static.copy_(new)
        self.source.load(memory)
        if self.graph is None:
            return model.decode_step(*self.args)
        self.graph.replay()
        return self.out


class GraphedSteps:
    """A model whose ``decode_step`` replays a CUDA graph per bucket; what it returns is valid
    until the next ``decode_step``."""

    def __init__(self, model: DecodableModel):
        self._model = weakref.ref(model)  # the graphs are kept with the model (``graphed``)
        self.rows: _Rows | None = None  # the newest buffers (older ones live on in their steps)
        self.sources: dict[int, _Source] = {}  # per padded source length
        self.steps: dict[tuple, _Step] = {}  # per (sentences, beams, padded source, training)
        self.pool = torch.cuda.graph_pool_handle() if torch.cuda.is_available() else None

    def encode(self, src: torch.Tensor, lengths: np.ndarray | torch.Tensor):
        return self._model().encode(src, lengths)

    def decode_step(self, prev: torch.Tensor, state, memory):
        """prev: [R] -> log-probabilities [R, V], new state, attention [R, S], as the model's."""
        model = self._model()
        sentences, source = _leaves(memory)[0].shape[:2]  # [A, S, K]: R = A x beams rows
        rows = len(prev)
        width = rows // sentences
        key = (bucket(sentences, ROW_BLOCK), width, bucket(source, SOURCE_BLOCK), model.training)
        step = self.steps.get(key)
        if step is None:
            size = (key[0] * width, key[0])
            if self.rows is None or len(self.rows.prev) < size[0]:
                self.rows = _Rows(prev, state, size[0])
            buffers = self.sources.get(key[2])
            if buffers is None or _leaves(buffers.memory)[0].size(0) < size[1]:
                buffers = self.sources[key[2]] = _Source(memory, size[1], key[2])
            step = self.steps[key] = _Step(model, self.rows, buffers, size, self.pool)
        logp, new_state, weights = step.run(model, prev, state, memory)
        return logp[:rows], new_state.head(rows), weights[:rows, :source].clone()


_graphed: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def graphed(model: DecodableModel) -> GraphedSteps:
    """The model's ``GraphedSteps``, made once and kept while the model lives."""
    if model not in _graphed:
        _graphed[model] = GraphedSteps(model)
    return _graphed[model]
