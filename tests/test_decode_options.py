"""Each decode option is declared once, on its DecodeConfig field: the command-line flags, the
server's request keys, the Translator's keywords and the ranges follow (the configs' comments:
tests/test_config.py)."""
import argparse
import dataclasses

import pytest

from nmt import config
from nmt.cli import _decode_args, _decode_overrides, evaluate_parser, translate_parser
from nmt.config import DecodeConfig, Range, decode_settings, option
from nmt.errors import ConfigError
from nmt.serve import OPTIONS, Limits
from nmt.translate import Translator

from conftest import Running, post_all

FIELDS = dataclasses.fields(DecodeConfig)
# nmt-translate has its own --n-best (it also chooses the output format); nmt-evaluate scores one.
FLAGLESS = {"n_best"}


def test_every_option_has_its_flag_unless_flagless_on_purpose():
    parser = argparse.ArgumentParser()
    _decode_args(parser)
    flags = {name for action in parser._actions for name in action.option_strings}
    flagged = {spec.name for spec in FIELDS if f"--{spec.name.replace('_', '-')}" in flags}
    assert {spec.name for spec in FIELDS} - flagged == FLAGLESS
    assert "--n-best" in translate_parser().format_help()
    assert "--n-best" not in evaluate_parser().format_help()
    # Not given: None, the run's setting.
    assert _decode_overrides(parser.parse_args([])) == {name: None for name in flagged}
    given = []
    for spec in FIELDS:
        if spec.name in flagged:
            # A switch takes no value.
            value = [] if isinstance(spec.default, bool) else [str(spec.default)]
            given += [f"--{spec.name.replace('_', '-')}", *value]
    overrides = _decode_overrides(parser.parse_args(given))
    assert overrides == {name: True if name == "cuda_graphs" else getattr(DecodeConfig(), name)
                         for name in flagged}
    assert all(type(value) is type(getattr(DecodeConfig(), name))
               for name, value in overrides.items())


def test_the_server_takes_the_options_marked_served():
    assert OPTIONS == tuple(spec.name for spec in FIELDS if spec.metadata["served"])
    assert set(OPTIONS) == {"beam_size", "n_best", "length_penalty", "length_penalty_type",
                            "max_length_ratio", "max_length", "min_length", "no_repeat_ngram_size",
                            "markup", "target_lang"}


def test_adding_an_option_is_one_field(monkeypatch):
    extended = dataclasses.make_dataclass(
        "DecodeConfig",
        [("lookahead", int, option(2, "pieces looked ahead", bounds=Range(0, 9), served=True))],
        bases=(DecodeConfig,))
    monkeypatch.setattr(config, "DecodeConfig", extended)
    args = translate_parser().parse_args(["run", "--lookahead", "4"])
    assert _decode_overrides(args)["lookahead"] == 4
    assert "pieces looked ahead" in translate_parser().format_help()
    assert decode_settings(extended(), {"lookahead": 4}).lookahead == 4
    with pytest.raises(ConfigError,
                       match=r"decode.lookahead: 10 is out of range; expected .* \[0, 9\]"):
        decode_settings(extended(), {"lookahead": 10})
    assert "lookahead" in [spec.name for spec in config.decode_fields("served")]


def test_the_beam_widens_to_n_best_when_not_given():
    assert decode_settings(DecodeConfig(beam_size=1), {"n_best": 3}).beam_size == 3
    assert decode_settings(DecodeConfig(beam_size=5), {"n_best": 3}).beam_size == 5
    with pytest.raises(ConfigError, match=r"decode.n_best: 3 exceeds decode.beam_size \(2\)"):
        decode_settings(DecodeConfig(beam_size=1), {"n_best": 3, "beam_size": 2})
    with pytest.raises(ConfigError,
                       match="too large for a target vocabulary.*as wide as decode.n_best"):
        decode_settings(DecodeConfig(beam_size=1), {"n_best": 200}, tgt_vocab_size=300)


@pytest.fixture(scope="module")
def greedy(reversal_run):
    """A translator whose run decodes greedily (beam_size 1)."""
    translator = Translator.load(reversal_run)
    translator.decode = dataclasses.replace(translator.decode, beam_size=1)
    return translator


def test_the_translator_takes_every_option_by_keyword(greedy):
    defaults = {spec.name: getattr(greedy.decode, spec.name) for spec in FIELDS}
    assert greedy.settings(**defaults) == greedy.decode
    unknown = r"^unknown key 'decode.beam_sise' \(did you mean 'decode.beam_size'\?\)$"
    with pytest.raises(ConfigError, match=unknown):
        greedy.translate(["a b"], beam_sise=3)
    assert [len(hyps) for hyps in greedy.hypotheses(["a b c", ""], n_best=3)] == [3, 0]
    assert len(greedy.translate_nbest("a b c", 3)) == 3


def test_a_request_for_n_best_widens_the_runs_beam(greedy):
    """Only "n_best": 3 against a greedy run: 3 hypotheses (the beam widens before validation)."""
    running = Running(greedy, Limits(batch_wait_ms=1))
    try:
        [(status, answer)] = post_all(running.url, [{"sentences": ["a b c"], "n_best": 3}])
    finally:
        running.stop()
    assert status == 200, answer
    assert len(answer["n_best"][0]) == 3
    assert answer["n_best"][0] == [{"translation": text, "score": score}
                                   for text, score in greedy.translate_nbest("a b c", 3)]
