"""ONNX export: the encoder and one decoder step as ONNX graphs, and a model that runs them.

The graphs are written with ``onnx.helper`` from the model's weights, op by op, as
``Seq2Seq.encode`` and ``Seq2Seq.decode_step`` compute at decoding time -- not traced
through ``torch.onnx``, whose exporter changes from one torch release to the next:
these graphs are the same for every torch >= 2.2. The encoder is ONNX's own LSTM /
GRU / RNN op per layer (``sequence_lens``: each direction starts and ends at a
sentence's own length, as packing does); the decoder step takes the state and the
memory as tensors and returns the new ones. Dynamic axes: batch, beams, source
length. ``OnnxModel`` offers what search needs of a model (``encode``,
``decode_step``) over onnxruntime sessions, so nmt's greedy, beam search and sampling
run unchanged.

Needs ``onnx`` (export) and ``onnxruntime`` (decoding): ``pip install 'nmt[onnx]'``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nmt.decoder import DecoderState, Memory
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
        raise NmtError(f"ONNX export and decoding need {module}: pip install 'nmt[onnx]'") from None


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
        array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
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
        w_q = torch.round(weight.detach().float() / w_scale[:, None]).to(torch.int8).t().contiguous()
        scale = self.op("Max", self.op("Div", self.op("ReduceMax", self.op("Abs", x), axes=[1], keepdims=0),
                                       self.const(np.float32(127.0))), self.const(np.float32(1e-12 / 127.0)))
        # The rows go in as uint8 with zero point 128 (q + 128: the same sums, exactly), for which
        # onnxruntime has fast kernels (14x its signed-by-signed product, measured on AVX-512).
        zero = self.op("Cast", self.op("Add", self.op("Mul", scale, self.const(np.float32(0.0))),
                                       self.const(np.float32(128.0))), to=2)  # uint8 128s [R]
        q = self.op("QuantizeLinear", x, scale, zero, axis=0)  # round half to even, as torch.round
        sums = self.op("Cast", self.op("MatMulInteger", q, self.const(w_q.numpy()),
                                       self.const(np.array(128, dtype=np.uint8))), to=1)
        return self.op("Mul", self.op("Mul", sums, self.op("Unsqueeze", scale, self.const(np.array([1])))),
                       self.const(w_scale))

    def finish(self, name: str, inputs: list, outputs: list):
        """The graph as a checked ONNX model (a ``ModelProto``)."""
        helper = self.onnx.helper
        types = {"float": 1, "int64": 7, "bool": 9}
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, types[t], shape) for n, t, shape in inputs],
            [helper.make_tensor_value_info(n, types[t], shape) for n, t, shape in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="nmt")
        self.onnx.checker.check_model(model)
        return model


def _rename(g: _Graph, source: str, name: str) -> str:
    g.nodes.append(g.onnx.helper.make_node("Identity", [source], [name]))
    return name


def _encoder_graph(model: Seq2Seq):
    g = _Graph()
    cell = model.cfg.cell
    encoder = model.encoder
    order = GATE_ORDER[cell]
    directions = encoder.directions
    x = g.op("Transpose", g.op("Gather", g.const(model.src_embed.weight), "src"), perm=[1, 0, 2])  # [S, B, E]
    lengths = g.op("Cast", "lengths", to=6)  # int32
    finals = []
    for layer in encoder.layers:
        size = layer.hidden_size

        def stacked(name):  # [D, gates * H, ...] in ONNX's gate order
            parts = [getattr(layer, f"{name}_l0{s}").detach() for s in ("", "_reverse")[:directions]]
            return torch.stack([torch.cat([p.view(len(order), size, *p.shape[1:])[i] for i in order]) for p in parts])
        extra = {"linear_before_reset": 1} if cell == "gru" else {}
        if cell == "rnn":
            extra["activations"] = ["Tanh"] * directions
        y, h, c = g.op(ONNX_RNN[cell], x, g.const(stacked("weight_ih")), g.const(stacked("weight_hh")),
                       g.const(torch.cat([stacked("bias_ih"), stacked("bias_hh")], 1)), lengths,
                       outputs=3 if cell == "lstm" else 2, hidden_size=size,
                       direction="bidirectional" if directions == 2 else "forward", **extra) + \
            ([] if cell == "lstm" else [None])
        x = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.const(np.array([0, 0, -1])))  # [S, B, D*H]

        def join(state):  # [D, B, H] -> [B, D * H], forward first
            return g.op("Reshape", g.op("Transpose", state, perm=[1, 0, 2]), g.const(np.array([0, -1])))
        finals.append((join(h), None if c is None else join(c)))
    values = _rename(g, g.op("Transpose", x, perm=[1, 0, 2]), "values")
    keys = "values" if model.decoder.attention.kind == "dot" else g.linear(values, model.decoder.attention.key_proj)
    _rename(g, keys, "keys")
    _rename(g, g.op("Not", g.op("Equal", "src", g.const(np.array(PAD)))), "mask")
    layers = len(model.decoder.cells)
    picks = [finals[max(0, len(finals) - layers + k)] for k in range(layers)]
    outputs = [("values", "float", ["B", "S", encoder.output_size]), ("keys", "float", ["B", "S", "Q"]),
               ("mask", "bool", ["B", "S"])]
    for i, (bridge, name) in enumerate(((model.bridge_h, "h"), (model.bridge_c, "c"))):
        if bridge is not None:
            rows = [g.op("Unsqueeze", g.op("Tanh", g.linear(f[i], bridge)), g.const(np.array([0]))) for f in picks]
            _rename(g, g.op("Concat", *rows, axis=0), name)
            outputs.append((name, "float", [layers, "B", model.cfg.decoder_hidden_size]))
    return g.finish("nmt_encoder", [("src", "int64", ["B", "S"]), ("lengths", "int64", ["B"])], outputs)


def _cell(g: _Graph, kind: str, cell, x: str, h: str, c: str | None) -> tuple[str, str | None]:
    """One decoder cell step, as ``nmt.decoder.cell_update``."""
    if g.int8 and kind != "gru":  # one product of [x; h], as nmt.quantize.Int8Cell
        gates = g.product(g.op("Concat", x, h, axis=1), torch.cat([cell.weight_ih, cell.weight_hh], 1),
                          cell.bias_ih + cell.bias_hh)
    else:
        x_gates = g.product(x, cell.weight_ih, cell.bias_ih)
        h_gates = g.product(h, cell.weight_hh, cell.bias_hh)
        gates = g.op("Add", x_gates, h_gates)
    if kind == "lstm":
        i, f, cand, o = g.op("Split", gates, axis=1, outputs=4)
        c = g.op("Add", g.op("Mul", g.op("Sigmoid", f), c), g.op("Mul", g.op("Sigmoid", i), g.op("Tanh", cand)))
        return g.op("Mul", g.op("Sigmoid", o), g.op("Tanh", c)), c
    if kind == "gru":
        x_r, x_z, x_n = g.op("Split", x_gates, axis=1, outputs=3)
        h_r, h_z, h_n = g.op("Split", h_gates, axis=1, outputs=3)
        r = g.op("Sigmoid", g.op("Add", x_r, h_r))
        z = g.op("Sigmoid", g.op("Add", x_z, h_z))
        n = g.op("Tanh", g.op("Add", x_n, g.op("Mul", r, h_n)))
        return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n))), None
    return g.op("Tanh", gates), None


def _attend(g: _Graph, attention, query: str, width: int) -> tuple[str, str]:
    """Context [R, K] and weights [R, S] for queries [R, width]; the R rows are A sentences' beams."""
    sentences = g.op("Slice", g.op("Shape", "keys"), g.const(np.array([0])), g.const(np.array([1])))
    if attention.kind == "mlp":
        query = g.linear(query, attention.query_proj)  # on the rows [R, Q], as int8 quantizes them
    q = g.op("Reshape", query, g.op("Concat", sentences, g.const(np.array([-1, width])), axis=0))  # [A, W, Q]
    if attention.kind == "mlp":
        hidden = g.op("Tanh", g.op("Add", g.op("Unsqueeze", "keys", g.const(np.array([1]))),
                                   g.op("Unsqueeze", q, g.const(np.array([2])))))
        scores = g.op("Squeeze", g.op("MatMul", hidden, g.const(attention.v.weight.t())), g.const(np.array([3])))
    else:
        scores = g.op("MatMul", q, g.op("Transpose", "keys", perm=[0, 2, 1]))  # [A, W, S]
    scores = g.op("Where", g.op("Unsqueeze", "mask", g.const(np.array([1]))), scores,
                  g.const(np.array(-np.inf, dtype=np.float32)))
    weights = g.op("Softmax", scores, axis=-1)
    context = g.op("MatMul", weights, "values")  # [A, W, K]
    return g.op("Flatten", context, axis=2), g.op("Flatten", weights, axis=2)


def _decoder_graph(model: Seq2Seq, int8: bool = False):
    g = _Graph(int8)
    decoder = model.decoder
    kind = model.cfg.cell
    x = g.op("Gather", g.const(model.tgt_embed.weight), "prev")  # [R, E]
    if decoder.input_feeding:
        x = g.op("Concat", x, "feed", axis=1)
    hs = []
    cs = []
    context = None  # context: the attending layer's, for the layers above
    weights = None
    for k, cell in enumerate(decoder.cells):
        if k > decoder.query_layer:
            x = g.op("Concat", x, context, axis=1)
        layer = g.const(np.array(k))
        h, c = _cell(g, kind, cell, x, g.op("Gather", "h", layer, axis=0),
                     g.op("Gather", "c", layer, axis=0) if kind == "lstm" else None)
        hs.append(g.op("Unsqueeze", h, g.const(np.array([0]))))
        if c is not None:
            cs.append(g.op("Unsqueeze", c, g.const(np.array([0]))))
        x = h
        if k == decoder.query_layer:
            context, weights = _attend(g, decoder.attention, x, model.cfg.decoder_hidden_size)
    vector = g.op("Tanh", g.product(g.op("Concat", context, x, axis=1), decoder.combine.weight, None))
    _rename(g, g.op("LogSoftmax", g.linear(vector, model.output), axis=-1), "logp")
    _rename(g, g.op("Concat", *hs, axis=0), "h_out")
    _rename(g, vector, "feed_out")
    _rename(g, weights, "weights")
    layers = len(decoder.cells)
    size = model.cfg.decoder_hidden_size
    state = [("h", "float", [layers, "R", size])] + ([("c", "float", [layers, "R", size])] if kind == "lstm" else [])
    outputs = [("logp", "float", ["R", "V"]), ("h_out", "float", [layers, "R", size]),
               ("feed_out", "float", ["R", size]), ("weights", "float", ["R", "S"])]
    if kind == "lstm":
        _rename(g, g.op("Concat", *cs, axis=0), "c_out")
        outputs.append(("c_out", "float", [layers, "R", size]))
    return g.finish("nmt_decoder_step",
           [("prev", "int64", ["R"]), *state, ("feed", "float", ["R", size]),
            ("values", "float", ["A", "S", model.encoder.output_size]), ("keys", "float", ["A", "S", "Q"]),
            ("mask", "bool", ["A", "S"])], outputs)


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
    (``OnnxModel(folder, cell)``) or of graphs made from a model in memory (``OnnxModel.of``)."""

    def __init__(self, folder: str | Path | None, cell: str, threads: int = 0, int8: bool = False,
                 graphs: tuple[bytes, bytes] | None = None):
        ort = _needs("onnxruntime")
        options = ort.SessionOptions()
        # Between steps PyTorch runs the search on the same cores: onnxruntime's threads must
        # sleep, not spin, once a step is done (spinning made beam 5 half as fast on 2 cores).
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
                    raise NmtError(f"{folder / name}: not found; write it with nmt-export RUN OUT --onnx")
            graphs = (str(folder / ENCODER), str(folder / decoder))
        self.encoder, self.decoder = (ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                                      for graph in graphs)

    @classmethod
    def of(cls, model: Seq2Seq, threads: int = 0, int8: bool = False) -> "OnnxModel":
        """``model``'s encoder and decoder step as ONNX graphs in memory, on onnxruntime."""
        with torch.no_grad():
            graphs = (_encoder_graph(model).SerializeToString(),
                      _decoder_graph(model, int8).SerializeToString())
        return cls(None, model.cfg.cell, threads, int8, graphs)

    def encode(self, src: torch.Tensor, lengths) -> tuple[Memory, DecoderState]:
        lengths = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64)
        out = self.encoder.run(None, {"src": np.ascontiguousarray(src.cpu().numpy()), "lengths": lengths})
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
