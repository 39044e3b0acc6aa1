"""Sampling: reproducible with a seed, independent of the batch, and drawn from what top-k/top-p allow."""
import math

import pytest
import torch

from nmt.cli import translate_main
from nmt.errors import ConfigError
from nmt.config import DecodeConfig
from nmt.search import sample_pieces
from nmt.translate import Translator

from conftest import reversal_pairs

SENTENCES = reversal_pairs(30, seed=31)[0] + [""]


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


def test_the_same_seed_gives_the_same_samples_in_any_batch(translator):
    together = translator.sample(SENTENCES, samples=3, seed=7, temperature=1.5, batch_size=64)
    assert translator.sample(SENTENCES, samples=3, seed=7, temperature=1.5, batch_size=1) == together
    alone = [translator.sample(s, samples=3, seed=7, temperature=1.5) for s in SENTENCES]
    assert alone == together and together[-1] == ["", "", ""]
    assert all(len(samples) == 3 for samples in together)
    other = translator.sample(SENTENCES, samples=3, seed=8, temperature=1.5)
    assert other != together  # another seed, other samples
    assert any(len(set(samples)) > 1 for samples in together)  # samples of one sentence differ


def test_cuts_that_leave_one_piece_give_greedy_output(translator):
    greedy = translator.translate(SENTENCES, beam_size=1)
    assert [s[0] for s in translator.sample(SENTENCES, top_k=1, seed=3)] == greedy
    assert [s[0] for s in translator.sample(SENTENCES, top_p=1e-9, seed=3)] == greedy


def test_draws_follow_the_cut_distribution():
    logp = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    for decode, allowed, first in ((DecodeConfig(top_k=2), {0, 1}, 0.4 / 0.7),
                                   (DecodeConfig(top_p=0.5), {0, 1}, 0.4 / 0.7),
                                   (DecodeConfig(), {0, 1, 2, 3}, 0.4)):
        picks = [sample_pieces(logp, decode, [seed], 0).item() for seed in range(2000)]
        assert set(picks) == allowed
        assert abs(picks.count(0) / len(picks) - first) < 0.05
    cold = [sample_pieces(logp, DecodeConfig(temperature=0.05), [seed], 0).item() for seed in range(200)]
    assert cold.count(0) > 190  # a low temperature sharpens towards the most probable piece
    assert math.isclose(torch.log_softmax(logp, 1).exp().sum().item(), 1.0, rel_tol=1e-6)


def test_sampling_options_are_checked(translator):
    for options, message in (({"temperature": 0.0}, "decode.temperature"), ({"top_p": 0.0}, "decode.top_p"),
                             ({"top_k": -1}, "decode.top_k"), ({"samples": -1}, "decode.samples"),
                             ({"seed": 2**40}, "decode.seed")):
        with pytest.raises(ConfigError, match=message):
            translator.sample(["a b"], **options) if "samples" not in options else \
                translator.hypotheses(["a b"], **options)


def test_the_command_writes_tab_separated_samples(reversal_run, tmp_path, capsys, translator):
    source = tmp_path / "in.txt"
    source.write_text("".join(s + "\n" for s in SENTENCES))
    argv = [str(reversal_run), "-i", str(source), "--samples", "2", "--seed", "5", "--temperature", "1.5"]
    assert translate_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = translator.sample(SENTENCES, samples=2, seed=5, temperature=1.5)
    assert [line.split("\t") for line in lines] == expected


def test_asking_for_no_sample_is_an_error_not_search_output(translator):
    with pytest.raises(ConfigError, match="samples: 0"):
        translator.sample(["a b c"], samples=0)
    for do_sample in (True, False):
        with pytest.raises(ConfigError, match="num_return_sequences is 0"):
            translator.generate(["a b c"], do_sample=do_sample, num_return_sequences=0)
