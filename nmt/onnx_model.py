"""ONNX export: the encoder and one decoder step as ONNX graphs, and a model that runs them.

The graphs are emitted by running ``nmt.core``'s equations on ``OnnxOps``, which writes
``onnx.helper`` nodes from the model's weights, not traced through ``torch.onnx`` (whose
exporter changes between torch releases): they are the same for every torch >= 2.2. The
decoder step takes the state and the memory as tensors and returns the new ones; dynamic
axes: batch, beams, source length. ``OnnxModel`` offers what search needs (``encode``,
``decode_step``) over onnxruntime sessions, so nmt's own search runs unchanged. Needs
``pip install 'nmt[onnx]'``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nmt import core
from nmt.core import DecoderState, Memory
from nmt.errors import NmtError
from nmt.model import Seq2Seq
from nmt.vocab import PAD

ENCODER = "encoder.onnx"
DECODER = "decoder_step.onnx"
DECODER_INT8 = "decoder_step.int8.onnx"
OPSET = 17
# PyTorch's gate order -> ONNX's: LSTM i f g o -> i o f c; GRU r z n -> z r h.
GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
ONNX_RNN = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _needs(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise NmtError(f"ONNX export and decoding need {module}: "
                       "pip install 'nmt[onnx]'") from None


class _Graph:
    """A graph under construction: weights become initializers, ops get fresh output names.
    ``int8``: products with weights run as nmt.quantize's do (int8 weights with a scale per
    output unit, each activation row quantized with its own scale, exact int32 sums)."""

    def __init__(self, int8: bool = False):
        self.onnx = _needs("onnx")
        self.nodes = []
        self.inits = []
        self.count = 0
        self.int8 = int8

    def const(self, value, name: str | None = None) -> str:
        name = name or f"c{len(self.inits)}"
        array = (value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor)
                 else np.asarray(value))
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, **attrs):
        self.count += 1
        names = [f"{kind.lower()}{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def linear(self, x: str, layer: torch.nn.Linear) -> str:
        return self.product(x, layer.weight, layer.bias)

    def product(self, x: str, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
        """x [R, in] times weight [out, in] transposed, plus bias."""
        if self.int8:
            y = self._int8_product(x, weight)
        else:
            y = self.op("MatMul", x, self.const(weight.t()))
        return y if bias is None else self.op("Add", y, self.const(bias))

    def _int8_product(self, x: str, weight: torch.Tensor) -> str:
        w_scale = weight.detach().float().abs().amax(1).clamp_min(1e-12) / 127.0  # [out]
        w_q = (torch.round(weight.detach().float() / w_scale[:, None]).to(torch.int8).t()
               .contiguous())
        scale = self.op("Max", self.op("Div", self.op("ReduceMax", self.op("Abs", x), axes=[1],
                                                      keepdims=0),
                                       self.const(np.float32(127.0))),
                        self.const(np.float32(1e-12 / 127.0)))
        # The rows go in as uint8 with zero point 128 (q + 128: the same sums, exactly), for
        # which onnxruntime has much faster kernels than for signed-by-signed products.
        zero = self.op("Cast", self.op("Add", self.op("Mul", scale, self.const(np.float32(0.0))),
                                       self.const(np.float32(128.0))), to=2)  # uint8 128s [R]
        q = self.op("QuantizeLinear", x, scale, zero, axis=0)  # half to even, as torch.round
        sums = self.op("Cast", self.op("MatMulInteger", q, self.const(w_q.numpy()),
                                       self.const(np.array(128, dtype=np.uint8))), to=1)
        return self.op("Mul", self.op("Mul", sums, self.op("Unsqueeze", scale,
                                                           self.const(np.array([1])))),
                       self.const(w_scale))

    def finish(self, name: str, inputs: list, outputs: list):
        """The graph as a checked ONNX model (a ``ModelProto``)."""
        helper = self.onnx.helper
        types = {"float": 1, "int64": 7, "bool": 9}
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, types[t], shape) for n, t, shape in inputs],
            [helper.make_tensor_value_info(n, types[t], shape) for n, t, shape in outputs],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="nmt")
        self.onnx.checker.check_model(model)
        return model


def _rename(g: _Graph, source: str, name: str) -> str:
    g.nodes.append(g.onnx.helper.make_node("Identity", [source], [name]))
    return name


class OnnxOps:
    """``nmt.core``'s operations as ONNX nodes: running the equations on value names
    builds the graph. ``int8``: products as ``nmt.quantize``'s (``_Graph.product``)."""

    def __init__(self, g: _Graph):
        self.g = g

    def _axes(self, *axes: int) -> str:
        return self.g.const(np.array(axes))

    def linear(self, x, layer):
        return self.g.product(x, layer.weight, layer.bias)

    def cell_products(self, cell, x, h):
        g = self.g
        if g.int8 and not isinstance(cell, torch.nn.GRUCell):  # one product of [x; h]
            both = torch.cat([cell.weight_ih, cell.weight_hh], 1)
            return g.product(self.cat([x, h]), both, cell.bias_ih + cell.bias_hh), None
        return (g.product(x, cell.weight_ih, cell.bias_ih),
                g.product(h, cell.weight_hh, cell.bias_hh))

    def add(self, a, b):
        return self.g.op("Add", a, b)

    def sub(self, a, b):
        return self.g.op("Sub", a, b)

    def mul(self, a, b):
        return self.g.op("Mul", a, b)

    def sigmoid(self, x):
        return self.g.op("Sigmoid", x)

    def tanh(self, x):
        return self.g.op("Tanh", x)

    def split(self, x, parts):
        return self.g.op("Split", x, axis=-1, outputs=parts)

    def cat(self, xs):
        return self.g.op("Concat", *xs, axis=-1)

    def embed(self, table, ids):
        return self.g.op("Gather", self.g.const(table.weight), ids)

    def log_softmax(self, x):
        return self.g.op("LogSoftmax", x, axis=-1)

    def layer(self, stacked, k):
        return self.g.op("Gather", stacked, self.g.const(np.array(k)), axis=0)

    def stack(self, xs):
        return self.g.op("Concat", *[self.g.op("Unsqueeze", x, self._axes(0)) for x in xs],
                         axis=0)

    def mask(self, src):
        return self.g.op("Not", self.g.op("Equal", src, self.g.const(np.array(PAD))))

    def zeros_like_rows(self, x, width):
        return None  # not a graph output: ``OnnxModel.encode`` makes the zeros

    def dot(self, q, keys):
        return self.g.op("MatMul", q, self.g.op("Transpose", keys, perm=[0, 2, 1]))

    def weigh(self, hidden, v):
        return self.g.op("Squeeze", self.g.op("MatMul", hidden, self.g.const(v.weight.t())),
                         self._axes(3))

    def outer_add(self, q, keys):
        return self.g.op("Add", self.g.op("Unsqueeze", keys, self._axes(1)),
                         self.g.op("Unsqueeze", q, self._axes(2)))

    def attend(self, scores, values, mask):
        scores = self.g.op("Where", self.g.op("Unsqueeze", mask, self._axes(1)), scores,
                           self.g.const(np.array(-np.inf, dtype=np.float32)))
        weights = self.g.op("Softmax", scores, axis=-1)
        return self.g.op("MatMul", weights, values), weights

    def per_sentence(self, attend_, query, memory):
        g = self.g
        sentences = g.op("Slice", g.op("Shape", memory.keys), self._axes(0), self._axes(1))
        width = g.op("Slice", g.op("Shape", query), self._axes(1), self._axes(2))
        q = g.op("Reshape", query, g.op("Concat", sentences, self._axes(-1), width, axis=0))
        context, weights = attend_(q, memory.keys, memory.values, memory.mask)  # [A, W, .]
        return g.op("Flatten", context, axis=2), g.op("Flatten", weights, axis=2)

    def encoder_layers(self, encoder, x, lengths):
        """ONNX's own LSTM / GRU / RNN op per layer (``sequence_lens``: each direction starts
        and ends at a sentence's own length, as packing does)."""
        g = self.g
        cell, directions = encoder.cell, encoder.directions
        order = GATE_ORDER[cell]
        x = g.op("Transpose", x, perm=[1, 0, 2])  # [S, B, E]
        lengths = g.op("Cast", lengths, to=6)  # int32
        finals = []
        for layer in encoder.layers:
            size = layer.hidden_size

            def stacked(name):  # [D, gates * H, ...] in ONNX's gate order
                parts = [getattr(layer, f"{name}_l0{s}").detach()
                         for s in ("", "_reverse")[:directions]]
                return torch.stack([torch.cat([p.view(len(order), size, *p.shape[1:])[i]
                                               for i in order])
                                    for p in parts])
            extra = {"linear_before_reset": 1} if cell == "gru" else {}
            if cell == "rnn":
                extra["activations"] = ["Tanh"] * directions
            y, h, *c = g.op(ONNX_RNN[cell], x, g.const(stacked("weight_ih")),
                            g.const(stacked("weight_hh")),
                            g.const(torch.cat([stacked("bias_ih"), stacked("bias_hh")], 1)),
                            lengths, outputs=3 if cell == "lstm" else 2, hidden_size=size,
                            direction="bidirectional" if directions == 2 else "forward", **extra)
            x = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]),
                     g.const(np.array([0, 0, -1])))

            def join(state):  # [D, B, H] -> [B, D * H], forward first
                return g.op("Reshape", g.op("Transpose", state, perm=[1, 0, 2]),
                            g.const(np.array([0, -1])))
            finals.append((join(h), join(c[0]) if c else None))
        return g.op("Transpose", x, perm=[1, 0, 2]), finals  # [B, S, D * H]


def _encoder_graph(model: Seq2Seq):
    g = _Graph()
    memory, state = core.encode(OnnxOps(g), model, "src", "lengths")
    layers, size = len(model.decoder.cells), model.cfg.decoder_hidden_size
    outputs = [("values", "float", ["B", "S", model.encoder.output_size]),
               ("keys", "float", ["B", "S", "Q"]), ("mask", "bool", ["B", "S"]),
               ("h", "float", [layers, "B", size])]
    if state.c is not None:
        outputs.append(("c", "float", [layers, "B", size]))
    for (name, *_), value in zip(outputs, (memory.values, memory.keys, memory.mask, state.h,
                                           state.c)):
        _rename(g, value, name)
    return g.finish("nmt_encoder", [("src", "int64", ["B", "S"]), ("lengths", "int64", ["B"])],
                    outputs)


def _decoder_graph(model: Seq2Seq, int8: bool = False):
    g = _Graph(int8)
    lstm = model.cfg.cell == "lstm"
    logp, state, weights = core.decode_step(OnnxOps(g), model, "prev",
                                            DecoderState("h", "c" if lstm else None, "feed"),
                                            Memory("values", "keys", "mask"))
    layers, size = len(model.decoder.cells), model.cfg.decoder_hidden_size
    outputs = [("logp", "float", ["R", "V"]), ("h_out", "float", [layers, "R", size]),
               ("feed_out", "float", ["R", size]), ("weights", "float", ["R", "S"])]
    values = [logp, state.h, state.feed, weights]
    if lstm:
        outputs.append(("c_out", "float", [layers, "R", size]))
        values.append(state.c)
    for (name, *_), value in zip(outputs, values):
        _rename(g, value, name)
    states = [("h", "float", [layers, "R", size])] + (
        [("c", "float", [layers, "R", size])] if lstm else [])
    return g.finish("nmt_decoder_step",
                    [("prev", "int64", ["R"]), *states, ("feed", "float", ["R", size]),
                     ("values", "float", ["A", "S", model.encoder.output_size]),
                     ("keys", "float", ["A", "S", "Q"]), ("mask", "bool", ["A", "S"])], outputs)


def export_onnx(model: Seq2Seq, folder: str | Path) -> list[Path]:
    """Write the encoder and the decoder step of ``model`` into ``folder``: float32, and the
    decoder step with int8 products (``--int8 --backend onnx``)."""
    folder = Path(folder)
    onnx = _needs("onnx")
    with torch.no_grad():
        graphs = {ENCODER: _encoder_graph(model), DECODER: _decoder_graph(model),
                  DECODER_INT8: _decoder_graph(model, int8=True)}
    for name, graph in graphs.items():
        onnx.save(graph, str(folder / name))
    return [folder / name for name in graphs]


class OnnxModel:
    """``encode`` and ``decode_step`` over onnxruntime sessions of a model folder's graphs
    (``OnnxModel(folder, cell)``) or of graphs made from a model in memory (``.of``)."""

    def __init__(self, folder: str | Path | None, cell: str, threads: int = 0,
                 int8: bool = False, graphs: tuple[bytes, bytes] | None = None):
        ort = _needs("onnxruntime")
        options = ort.SessionOptions()
        # Between steps PyTorch runs the search on the same cores: onnxruntime's threads must
        # sleep, not spin, once a step is done.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.lstm = cell == "lstm"
        self.training = False
        if graphs is None:
            folder = Path(folder)
            decoder = DECODER_INT8 if int8 else DECODER
            for name in (ENCODER, decoder):
                if not (folder / name).is_file():
                    raise NmtError(f"{folder / name}: not found; "
                                   "write it with nmt-export RUN OUT --onnx")
            graphs = (str(folder / ENCODER), str(folder / decoder))
        self.encoder, self.decoder = (
            ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            for graph in graphs)

    @classmethod
    def of(cls, model: Seq2Seq, threads: int = 0, int8: bool = False) -> "OnnxModel":
        """``model``'s encoder and decoder step as ONNX graphs in memory, on onnxruntime."""
        with torch.no_grad():
            graphs = (_encoder_graph(model).SerializeToString(),
                      _decoder_graph(model, int8).SerializeToString())
        return cls(None, model.cfg.cell, threads, int8, graphs)

    def encode(self, src: torch.Tensor, lengths) -> tuple[Memory, DecoderState]:
        lengths = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths,
                             dtype=np.int64)
        out = self.encoder.run(None, {"src": np.ascontiguousarray(src.cpu().numpy()),
                                      "lengths": lengths})
        values, keys, mask, h = (torch.from_numpy(a) for a in out[:4])
        c = torch.from_numpy(out[4]) if self.lstm else None
        return Memory(values, keys, mask), DecoderState(h, c, h.new_zeros(h.shape[1:]))

    def decode_step(self, prev: torch.Tensor, state: DecoderState, memory: Memory
                    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        tensors = {"prev": prev, "h": state.h, "feed": state.feed, "values": memory.values,
                   "keys": memory.keys, "mask": memory.mask}
        if self.lstm:
            tensors["c"] = state.c
        feeds = {name: np.ascontiguousarray(t.cpu().numpy()) for name, t in tensors.items()}
        out = [torch.from_numpy(a) for a in self.decoder.run(None, feeds)]
        logp, h, feed, weights = out[:4]
        return logp, DecoderState(h, out[4] if self.lstm else None, feed), weights
