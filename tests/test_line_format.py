"""One line in, one line out: no decoded output holds a control character or a line break."""
import unicodedata

import pytest
import torch

from nmt.cli import translate_main
from nmt.translate import Translator
from nmt.vocab import END, one_line

from conftest import reversal_pairs

BREAKING = {"Cc", "Zl", "Zp"}


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


def clean(text: str) -> bool:
    return not any(unicodedata.category(c) in BREAKING for c in text)


def test_the_rule_replaces_every_control_character_and_line_break_with_a_space():
    assert one_line("a\tb\nc\rd\x00e\x7ff\x85g\u2028h\u2029i") == "a b c d e f g h i"
    assert one_line("Ein Hund läuft. 🐕 \u00a0«ok»") == "Ein Hund läuft. 🐕 \u00a0«ok»"


def test_the_control_pieces_are_the_byte_pieces_of_control_bytes(translator):
    vocab = translator.tgt_vocab
    banned = set(vocab.control_ids)
    pieces = {vocab.sp.id_to_piece(i) for i in banned}
    assert {"<0x0A>", "<0x09>", "<0x0D>", "<0x00>", "<0x1F>", "<0x7F>"} <= pieces
    assert "<0x20>" not in pieces and "<0xC2>" not in pieces and END not in banned
    assert all(vocab.sp.is_byte(i) for i in banned)  # this vocabulary's text pieces hold none


def test_search_never_emits_a_control_piece_even_when_the_model_prefers_it(translator, monkeypatch):
    model, newline = translator.model, translator.tgt_vocab.sp.piece_to_id("<0x0A>")
    real_step = model.decode_step

    def loves_newlines(prev, state, memory):
        logp, state, weights = real_step(prev, state, memory)
        return logp.index_fill(1, torch.tensor([newline]), 0.0), state, weights  # probability 1

    monkeypatch.setattr(model, "decode_step", loves_newlines)
    sentences = reversal_pairs(20, seed=4)[0]
    for options in ({"beam_size": 1}, {"beam_size": 3}, {"samples": 2, "seed": 1}):
        found = translator.hypotheses(sentences, **options)
        assert all(newline not in h.tokens for hyps in found for h in hyps), options


def test_hot_samples_keep_one_line_per_input_line_and_their_fields(reversal_run, tmp_path, translator):
    sentences = reversal_pairs(20, seed=9)[0]
    drawn = translator.sample(sentences, samples=10, temperature=50.0, seed=1)
    assert all(clean(text) for texts in drawn for text in texts)
    assert any(text.strip() for texts in drawn for text in texts)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    assert translate_main([str(reversal_run), "-i", str(src), "-o", str(out), "--samples", "3",
                           "--temperature", "50", "--seed", "1"]) == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 21
    assert all(len(line.split("\t")) == 3 and "\r" not in line for line in lines[:-1])


def test_text_that_encodes_to_no_piece_translates_to_nothing(translator):
    nothing = ["\u200b", "\ufeff", "\x01"]  # sentencepiece's normalisation removes them
    assert translator.src_vocab.encode(nothing) == [[], [], []]
    out = translator.translate(nothing + ["a b c", ""])
    assert out == ["", "", "", translator.translate("a b c"), ""]
    assert translator.translate_nbest(["\u200b"], n_best=2) == [[]]
