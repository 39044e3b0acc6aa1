"""End to end: attention and decoding must learn to reverse random sequences."""
import sys

from nmt import Translator, translate
from nmt.io import read_lines


def test_reversal_is_learned_to_95_percent_exact_match(reversal_run, reversal_data):
    src = read_lines(reversal_data["test"] + ".src")
    ref = read_lines(reversal_data["test"] + ".tgt")
    translator = Translator.load(reversal_run)
    for beam in (1, 4):
        out = translator.translate(src, beam_size=beam)
        exact = sum(o == r for o, r in zip(out, ref)) / len(ref)
        assert exact >= 0.95, f"beam {beam}: exact match {exact:.2%}"


def test_int8_decoding_keeps_the_quality(reversal_run, reversal_data, monkeypatch):
    src = read_lines(reversal_data["test"] + ".src")
    ref = read_lines(reversal_data["test"] + ".tgt")
    monkeypatch.setattr(translate, "fast_int8", lambda device: True)  # the int8 path on any CPU
    translator = Translator.load(reversal_run, int8=True)
    assert translator.int8 and str(translator.engine) == "pytorch int8"
    kinds = {type(m).__name__ for m in translator.model.modules()}
    assert {"Int8Cell", "Int8Linear"} <= kinds and "Linear" not in kinds and "LSTMCell" not in kinds
    out = translator.translate(src, beam_size=4)
    assert sum(o == r for o, r in zip(out, ref)) / len(ref) >= 0.9
    # activations are quantized row by row, so the batch size changes nothing (bit for bit, on
    # 1,000 sentences: test_batch_invariance)
    for beam in (1, 4):
        outputs = [translator.translate(src[:50], beam_size=beam, batch_size=size)
                   for size in (1, 7, 64)]
        assert outputs[0] == outputs[1] == outputs[2], f"beam {beam}"


def test_int8_runs_on_onnxruntime_where_the_cpu_has_no_fast_int8(reversal_run, reversal_data, monkeypatch):
    """Without VNNI PyTorch's int8 is slower than float32, onnxruntime's is not: the same
    arithmetic (int8 weights, each row quantized on its own) runs as ONNX graphs made in memory."""
    from nmt.onnx_model import OnnxModel
    src = read_lines(reversal_data["test"] + ".src")
    ref = read_lines(reversal_data["test"] + ".tgt")
    monkeypatch.setattr(translate, "fast_int8", lambda device: True)
    torch_int8 = Translator.load(reversal_run, int8=True).translate(src, beam_size=4)
    monkeypatch.setattr(translate, "fast_int8", lambda device: False)
    translator = Translator.load(reversal_run, int8=True)
    assert translator.int8 and isinstance(translator.model, OnnxModel)
    assert str(translator.engine) == "onnxruntime int8"
    out = translator.translate(src, beam_size=4)
    assert sum(o == r for o, r in zip(out, ref)) / len(ref) >= 0.9
    assert sum(o == t for o, t in zip(out, torch_int8)) >= 0.99 * len(src)


def test_int8_is_declined_without_vnni_or_onnxruntime(reversal_run, reversal_data, monkeypatch, capsys):
    """Without VNNI and without the onnx extra, int8 decoding would be slower than float32:
    it is declined with a warning naming the extra, and the output is float32's."""
    monkeypatch.setattr(translate, "fast_int8", lambda device: False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    src = read_lines(reversal_data["test"] + ".src")[:40]
    declined = Translator.load(reversal_run, int8=True)
    warning = capsys.readouterr().err
    assert not declined.int8 and "int8 decoding declined" in warning and "nmt[onnx]" in warning
    assert str(declined.engine) == "pytorch float32"
    assert not any("Int8" in type(m).__name__ for m in declined.model.modules())
    assert declined.translate(src) == Translator.load(reversal_run).translate(src)
