"""decode.cuda_graphs: each decoder step on inputs padded to a bucket, in buffers that stay put.

On a GPU the step is captured and replayed; here the same code runs it eagerly on
the same padded buffers, so these tests check everything but the capture itself:
the buckets, the padding, the buffers reused across batches and steps, and that
the output is the eager output bit for bit. ``benchmarks/batch_invariance.py
--device cuda --cuda-graphs`` checks the captured graphs on a GPU.
"""
import pytest
import torch

from conftest import HostTransfers, reversal_pairs
from nmt.loading import load_run
from nmt.config import DecodeConfig, config_from_dict
from nmt.ensemble import Ensemble
from nmt.graphs import SOURCE_BLOCK, bucket, graphed
from nmt.invariant import ROW_BLOCK
from nmt.model import Seq2Seq
from nmt.translate import Translator, decode_corpus

MODES = {"greedy": {"beam_size": 1}, "beam 4, 3-best": {"beam_size": 4, "n_best": 3},
         "beam 3, no repeated 2-grams": {"beam_size": 3, "no_repeat_ngram_size": 2},
         "sampling": {"samples": 2, "temperature": 1.5}}


def test_buckets_cover_every_size_with_few_graphs():
    for least in (ROW_BLOCK, SOURCE_BLOCK):
        sizes = [bucket(n, least) for n in range(1, 5001)]
        assert all(size >= n and size % least == 0 and size <= 1.25 * n + least
                   for n, size in enumerate(sizes, 1))
        assert sizes == sorted(sizes)
        assert len(set(sizes)) < 45  # about four per doubling


def _found(model, ids, batch_size, options, **extra):
    decode = DecodeConfig(batch_size=batch_size, max_length_ratio=1.5, **options, **extra)
    return [[(h.tokens, h.score, h.ended, None if h.attention is None else h.attention.tolist())
             for h in hyps] for hyps in decode_corpus(model, ids, decode, keep_attention=True)]


@pytest.mark.parametrize("mode", MODES)
def test_graphed_steps_decode_exactly_as_eager_ones(reversal_run, mode):
    run = load_run(reversal_run)
    ids = run.src_vocab.encode(reversal_pairs(160, seed=8)[0])
    for batch_size in (64, 7):  # buffers reused across batches of other lengths and widths
        eager = _found(run.model, ids, batch_size, MODES[mode])
        assert _found(run.model, ids, batch_size, MODES[mode], cuda_graphs=True) == eager, batch_size


@pytest.mark.parametrize("decoder", ["luong", "gnmt"])
def test_an_ensemble_and_a_gnmt_model_decode_as_eager(reversal_run, decoder):
    run = load_run(reversal_run)
    torch.manual_seed(3)
    cfg = config_from_dict({"model": {"embedding_size": 32, "encoder_hidden_size": 32, "decoder_hidden_size": 48,
                                      "decoder_layers": 3, "decoder": decoder, "input_feeding": False,
                                      "attention": "mlp", "tie_output": False}}).model
    other = Seq2Seq(cfg, len(run.src_vocab), len(run.tgt_vocab)).eval()
    ids = run.src_vocab.encode(reversal_pairs(64, seed=9)[0])
    for model in (other, Ensemble([run.model, other]).eval()):
        for options in ({"beam_size": 1}, {"beam_size": 3}):
            assert _found(model, ids, 16, options, cuda_graphs=True) == _found(model, ids, 16, options)


def test_captures_are_kept_and_reused(reversal_run):
    run = load_run(reversal_run)
    ids = run.src_vocab.encode(reversal_pairs(200, seed=10)[0])
    _found(run.model, ids, 64, {"beam_size": 3}, cuda_graphs=True)
    steps = graphed(run.model).steps
    made = dict(steps)
    assert 0 < len(made) < 40
    _found(run.model, ids, 64, {"beam_size": 3}, cuda_graphs=True)
    assert all(steps[key] is step for key, step in made.items()) and len(steps) == len(made)


@pytest.mark.parametrize("decoder", ["luong", "gnmt"])
def test_a_decoder_step_never_waits_for_the_device(decoder, monkeypatch):
    """What a CUDA graph can capture: no op of the step copies data to the host."""
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"embedding_size": 16, "encoder_hidden_size": 16, "decoder_hidden_size": 32,
                                      "decoder_layers": 2, "decoder": decoder,
                                      "input_feeding": decoder == "luong", "tie_output": False}}).model
    model = Ensemble([Seq2Seq(cfg, 30, 30).eval(), Seq2Seq(cfg, 30, 30).eval()])
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0], [4, 2, 0, 0]])
    memory, state = model.encode(src, torch.tensor([4, 3, 2]))
    with torch.no_grad(), HostTransfers(monkeypatch) as transfers:
        logp, state, _ = model.decode_step(torch.tensor([2, 2, 2]), state, memory)
        model.decode_step(logp.argmax(1), state, memory)
    assert transfers.count == 0


def test_the_option_reaches_the_translator_and_the_command_line(reversal_run, tmp_path, capsys):
    from nmt.cli import translate_main
    translator = Translator.load(reversal_run)
    sentences = reversal_pairs(30, seed=11)[0]
    assert translator.translate(sentences, cuda_graphs=True) == translator.translate(sentences)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    for flags in ([], ["--cuda-graphs"]):
        assert translate_main([str(reversal_run), "-i", str(source), "-o", str(tmp_path / "out.txt")] + flags) == 0
        assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == translator.translate(sentences)
