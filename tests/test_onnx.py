"""ONNX export (nmt-export --onnx): the graphs compute what the model computes, and nmt's
search over them (backend onnx) gives PyTorch's translations."""
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import reversal_pairs
from nmt.cli import export_main, translate_main
from nmt.config import config_from_dict
from nmt.errors import ConfigError, NmtError
from nmt.model import Seq2Seq
from nmt.onnx_model import DECODER, ENCODER, OnnxModel, export_onnx
from nmt.translate import Translator


@pytest.fixture(scope="module")
def onnx_folder(reversal_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model"
    assert export_main([str(reversal_run), str(out), "--onnx"]) == 0
    return out


def test_the_graphs_pass_the_checker_with_dynamic_axes(onnx_folder):
    for name in (ENCODER, DECODER):
        model = onnx.load(str(onnx_folder / name))
        onnx.checker.check_model(model, full_check=True)
        dims = [d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param]
        assert dims, name  # batch, beams, source length: named, not fixed


@pytest.mark.parametrize("options", [{"beam_size": 1}, {"beam_size": 5}, {"beam_size": 3, "n_best": 3}])
def test_onnx_decoding_gives_pytorchs_translations(reversal_run, onnx_folder, options):
    sentences = reversal_pairs(400, seed=41)[0]
    torch_found = Translator.load(reversal_run).hypotheses(sentences, **options)
    onnx_found = Translator.load(onnx_folder, backend="onnx").hypotheses(sentences, **options)
    same = sum([h.tokens for h in a] == [h.tokens for h in b] for a, b in zip(torch_found, onnx_found))
    assert same == len(sentences)  # onnxruntime sums in other orders: scores agree to float32 rounding
    assert max(abs(x.score - y.score) for a, b in zip(torch_found, onnx_found) for x, y in zip(a, b)) < 1e-3


@pytest.mark.parametrize("variant", [
    {"cell": "lstm", "attention": "general", "decoder_layers": 2},
    {"cell": "gru", "attention": "mlp", "encoder_layers": 3, "decoder_layers": 2},
    {"cell": "rnn", "attention": "dot", "bidirectional": False, "encoder_hidden_size": 24},
    {"cell": "lstm", "attention": "mlp", "decoder": "gnmt", "input_feeding": False, "decoder_layers": 3},
    {"cell": "gru", "attention": "general", "input_feeding": False, "encoder_layers": 1, "decoder_layers": 3},
])
def test_every_model_variant_exports_to_the_same_arithmetic(variant, tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict({"model": dict({"embedding_size": 16, "encoder_hidden_size": 12,
                                           "decoder_hidden_size": 24, "tie_output": False}, **variant)}).model
    model = Seq2Seq(cfg, 40, 40).eval()
    export_onnx(model, tmp_path)
    ported = OnnxModel(tmp_path, cfg.cell)
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0], [11, 12, 13, 2, 0]])
    lengths = np.array([5, 3, 4])
    with torch.no_grad():
        (memory, state), (o_memory, o_state) = model.encode(src, lengths), ported.encode(src, lengths)
        for a, b in ((memory.values, o_memory.values), (memory.keys, o_memory.keys), (state.h, o_state.h)):
            assert torch.allclose(a, b, atol=1e-5)
        assert torch.equal(memory.mask, o_memory.mask)
        prev = torch.tensor([2, 2, 2])
        for _ in range(3):  # steps 2 and 3 feed each one's own state back, three beams a sentence at the last
            logp, state, weights = model.decode_step(prev, state, memory)
            o_logp, o_state, o_weights = ported.decode_step(prev, o_state, o_memory)
            assert torch.allclose(logp, o_logp, atol=1e-4) and torch.allclose(weights, o_weights, atol=1e-5)
            prev = logp.argmax(1)
        beams = torch.arange(3).repeat_interleave(3)
        logp, _, _ = model.decode_step(prev[beams], state.select(beams), memory)
        o_logp, _, _ = ported.decode_step(prev[beams], o_state.select(beams), o_memory)
        assert torch.allclose(logp, o_logp, atol=1e-4)


def test_backend_onnx_errors_are_one_line(reversal_run, onnx_folder, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="nmt-export RUN OUT --onnx"):
        Translator.load(reversal_run, backend="onnx")
    plain = tmp_path / "plain"
    assert export_main([str(reversal_run), str(plain)]) == 0
    with pytest.raises(NmtError, match="encoder.onnx: not found"):
        Translator.load(plain, backend="onnx")
    with pytest.raises(ConfigError, match="backend"):
        Translator.load(onnx_folder, backend="tensorrt")
    source = tmp_path / "in.txt"
    source.write_text("a b c\n", encoding="utf-8")
    assert translate_main([str(onnx_folder), "--backend", "onnx", "-i", str(source), "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o").read_text().splitlines() == Translator.load(reversal_run).translate(["a b c"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(NmtError, match=r"nmt\[onnx\]"):
        Translator.load(onnx_folder, backend="onnx")


def test_the_int8_decoder_step_multiplies_in_int8_and_translates_as_nmts_int8(reversal_run, onnx_folder):
    import copy

    from nmt.onnx_model import DECODER_INT8
    from nmt.quantize import quantize_int8
    from nmt.translate import decode_corpus
    ops = [node.op_type for node in onnx.load(str(onnx_folder / DECODER_INT8)).graph.node]
    layers = Translator.load(reversal_run).run.cfg.model.decoder_layers
    assert ops.count("MatMulInteger") == layers + 2  # each cell's [x; h] product, combine, output layer
    assert ops.count("MatMul") == 2  # attention's scores and context, in float as nmt.quantize leaves them
    sentences = reversal_pairs(400, seed=42)[0]
    onnx8 = Translator.load(onnx_folder, backend="onnx", int8=True)
    assert onnx8.int8
    ids = onnx8.src_vocab.encode(sentences)
    torch8 = quantize_int8(copy.deepcopy(Translator.load(reversal_run).model))
    decode = onnx8.settings(beam_size=5)
    same = sum(a[0].tokens == b[0].tokens for a, b in
               zip(decode_corpus(onnx8.model, ids, decode), decode_corpus(torch8, ids, decode)))
    assert same >= 0.99 * len(sentences)
