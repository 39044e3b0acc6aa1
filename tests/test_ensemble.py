"""Ensembles: the mean of the members' per-step log-probabilities, decoded by the usual search."""
import pytest
import torch

from nmt.cli import translate_main
from nmt.config import config_from_dict
from nmt.ensemble import Ensemble
from nmt.errors import CheckpointError
from nmt.train import train
from nmt.translate import Translator

from conftest import reversal_config, reversal_pairs

SENTENCES = reversal_pairs(40, seed=21)[0] + [""]


def test_an_ensemble_of_one_is_that_model(reversal_run):
    alone = Translator.load(reversal_run)
    one = Translator.load(reversal_run)
    one.model = Ensemble([one.model])
    for beam in (1, 3):
        a = alone.hypotheses(SENTENCES, beam_size=beam, n_best=1)
        b = one.hypotheses(SENTENCES, beam_size=beam, n_best=1)
        assert [[(h.tokens, h.score) for h in x] for x in a] == [[(h.tokens, h.score) for h in x] for x in b]


def test_each_step_averages_the_members_log_probabilities(reversal_run):
    best, last = Translator.load(reversal_run), Translator.load(reversal_run, "last")
    pair = Translator.load(reversal_run, ensemble=[f"{reversal_run}:last"])
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    lengths = torch.tensor([4, 3])
    prev = torch.tensor([2, 2])
    memory, state = pair.model.encode(src, lengths)
    logp, _, weights = pair.model.decode_step(prev, state, memory)
    outs = []
    for member in (best.model, last.model):
        m, s = member.encode(src, lengths)
        outs.append(member.decode_step(prev, s, m))
    assert torch.allclose(logp, (outs[0][0] + outs[1][0]) / 2, atol=1e-6)
    assert torch.allclose(weights, (outs[0][2] + outs[1][2]) / 2, atol=1e-6)


def test_an_ensembles_translation_does_not_depend_on_the_batch(reversal_run):
    pair = Translator.load(reversal_run, ensemble=[f"{reversal_run}:last"])
    together = pair.translate(SENTENCES, beam_size=3, batch_size=64)
    alone = [pair.translate([s], beam_size=3)[0] for s in SENTENCES]
    assert together == alone and together[-1] == ""


def test_members_need_one_vocabulary(reversal_run, reversal_data, tmp_path):
    other = tmp_path / "other"
    train(config_from_dict(reversal_config(reversal_data, data__vocab_size=290, train__max_steps=2,
                                           train__valid_every=2, model__embedding_size=16,
                                           model__encoder_hidden_size=16, model__decoder_hidden_size=16)), other)
    with pytest.raises(CheckpointError, match="vocabulary differs"):
        Translator.load(reversal_run, ensemble=[str(other)])


def test_the_command_takes_an_ensemble(reversal_run, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("".join(s + "\n" for s in SENTENCES))
    assert translate_main([str(reversal_run), "-i", str(source), "--ensemble", f"{reversal_run}:last"]) == 0
    pair = Translator.load(reversal_run, ensemble=[f"{reversal_run}:last"])
    assert capsys.readouterr().out.splitlines() == pair.translate(SENTENCES)


def test_an_ensemble_decodes_greedily_keeping_attention(reversal_run):
    pair = Translator.load(reversal_run, ensemble=[f"{reversal_run}:last"])
    found = pair.hypotheses(SENTENCES[:6], keep_attention=True, beam_size=1)
    plain = pair.hypotheses(SENTENCES[:6], beam_size=1)
    for hyps, same in zip(found, plain):
        h = hyps[0]
        assert h.tokens == same[0].tokens and h.attention.shape[0] == len(h.tokens) + h.ended
        assert torch.allclose(h.attention.sum(1), torch.ones(h.attention.shape[0]), atol=1e-5)
