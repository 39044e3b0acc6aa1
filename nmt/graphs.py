"""Decoding under CUDA graphs (``decode.cuda_graphs``): a decoder step replayed, not launched.

A decoder step is a few hundred small kernels; at decoding's batch sizes a GPU spends the step
launching them. ``GraphedSteps`` wraps a model for search (and is a ``DecodableModel``): it
captures the step once per bucket of (sentences, beams per sentence, source length) as a CUDA
graph and replays it. Rows and source are padded up to their bucket (extra sentences copy
sentence 0, extra source positions are masked); since a sentence's results do not depend on
the rest of its batch (``nmt.invariant``), a graphed step gives what an eager one does. Off
CUDA the same code runs eagerly on the padded inputs (what the tests check). The search's own
bookkeeping stays eager.
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
    """``obj`` (a tensor, None, a list or a dataclass of these: Memory, DecoderState,
    ensemble.PerMember) rebuilt with ``fn`` applied to each tensor."""
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
    """The state rows steps read, in buffers that stay where they are (a replay reads them
    there); made from a first batch's rows repeated, so that rows past a later batch's own
    always hold some real sentence's values (stale ones: harmless, rows do not mix)."""

    def __init__(self, prev: torch.Tensor, state, rows: int):
        index = torch.arange(rows, device=prev.device) % len(prev)
        self.prev = prev[index]
        self.state = state.select(index)


class _Source:
    """The memory steps read: ``sentences`` rows padded to ``source`` positions (zeros past
    a batch's length: the mask's False), made and kept as ``_Rows``."""

    def __init__(self, memory, sentences: int, source: int):
        memory = memory.select(torch.arange(sentences, device=_leaves(memory)[0].device)
                               % _leaves(memory)[0].size(0))

        def padded(t: torch.Tensor) -> torch.Tensor:  # [A, S', ...] -> [A, source, ...]
            return torch.cat([t, t.new_zeros(t.size(0), source - t.size(1), *t.shape[2:])], 1)

        self.memory = _map(padded, memory)
        # the caller's memory last copied in (it changes as sentences finish)
        self.memory_of = lambda: None

    def load(self, memory) -> None:
        if self.memory_of() is not memory:
            for static, new in zip(_leaves(self.memory), _leaves(memory)):
                static[:len(new), :new.size(1)].copy_(new)
                static[:len(new), new.size(1):].zero_()
            self.memory_of = weakref.ref(memory)


class _Step:
    """One bucket's step over the first rows of its buffers: captured as a CUDA graph, or
    (off CUDA) run eagerly on the same views."""

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
    """A model for search whose ``decode_step`` runs as a replayed CUDA graph per bucket. What
    it returns is valid until the next ``decode_step`` (the next replay overwrites it)."""

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
        first = _leaves(memory)[0]  # [A, S, K]: A sentences, R = A x beams rows
        sentences, source = first.shape[:2]
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
    """The model's ``GraphedSteps``, made once and kept while the model lives (captures are
    reused by every later batch, request and call)."""
    if model not in _graphed:
        _graphed[model] = GraphedSteps(model)
    return _graphed[model]
