"""The Python API's contract: what Translator.translate takes and gives back."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nmt.translate import Translator


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


def test_a_single_string_gives_a_single_translation(translator):
    one = translator.translate("a b c")
    assert isinstance(one, str) and one == translator.translate(["a b c"])[0]
    assert translator.translate("") == ""
    nbest = translator.translate_nbest("a b c", n_best=2)
    assert nbest == translator.translate_nbest(["a b c"], n_best=2)[0] and len(nbest) == 2


@pytest.mark.parametrize("bad, message", [
    (["a b", None], r"sentences\[1\]: expected str, got NoneType"),
    (["a b", "c", 3], r"sentences\[2\]: expected str, got int"),
    ([b"a b"], r"sentences\[0\]: expected str, got bytes"),
    (None, "sentences: expected a list of str, got NoneType"),
    (b"a b", "sentences: expected a list of str, got bytes"),
])
def test_items_that_are_not_text_raise_type_error_naming_them(translator, bad, message):
    with pytest.raises(TypeError, match=message):
        translator.translate(bad)


def test_text_that_is_not_unicode_raises_value_error_naming_it(translator):
    with pytest.raises(ValueError, match=r"sentences\[1\]: not valid Unicode text"):
        translator.translate(["a", "b\ud800c"])


def test_any_iterable_of_strings_is_taken(translator):
    assert translator.translate(iter(["a b", "c"])) == translator.translate(["a b", "c"])
    assert translator.translate(()) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40), max_size=6))
def test_any_unicode_list_gives_one_output_per_input(translator, sentences):
    out = translator.translate(sentences, beam_size=2)
    assert isinstance(out, list) and len(out) == len(sentences)
    assert all(isinstance(t, str) for t in out)
    for sentence, translation in zip(sentences, out):
        if not sentence.strip():
            assert translation == ""


def test_options_are_checked_against_the_model(translator):
    from nmt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"decode.beam_size: 151 is too large for a target vocabulary "
                                          r"of 300 pieces \(at most 150\)"):
        translator.translate(["a b"], beam_size=151)
    assert len(translator.translate_nbest(["a b"], n_best=150)[0]) == 150  # the widest beam runs
    with pytest.raises(ConfigError, match=r"decode.length_penalty: must be a finite number, got nan"):
        translator.translate(["a b"], length_penalty=float("nan"))
    with pytest.raises(ConfigError, match=r"decode.beam_size: expected int, got '5'"):
        translator.translate(["a b"], beam_size="5")
