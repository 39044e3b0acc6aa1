"""Every option, from every place it can come from (config file, --set, command-line flags,
Python keyword arguments), is either accepted and usable or refused with one clean line:
random values thrown at all of them (hypothesis)."""
import dataclasses
import math
import os

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from nmt.cli import train_main, translate_main
from nmt.config import Config, config_from_dict, load_config
from nmt.errors import ConfigError
from forecast_sine import SineConfig, main as forecast_main
from nmt.translate import Translator

from conftest import reversal_config

KEYS = [f"{section}.{name}" for section, values in Config().to_dict().items() for name in values]
DECODE_KEYS = ["beam_size", "batch_size", "length_penalty", "max_length_ratio", "n_best"]
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])

# What careless and hostile input looks like: the wrong type, NaN, infinities, huge and
# negative numbers, odd text (NUL included), nested values.
WILD = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 40), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308]),
    st.text(max_size=8), st.sampled_from(["", "\0", "1e-3", "cuda:99", "auto", "lstm", "-1"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
# The same, written as a user types it after --set or a flag.
TYPED = st.one_of(WILD.map(lambda v: yaml.safe_dump(v, default_flow_style=True)
                           .removesuffix("\n...\n").strip()), st.text(max_size=12))


def one_clean_line(message: str, *names: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message
    assert any(name in message for name in names), message


@SLOW
@given(key=st.sampled_from(KEYS), value=WILD)
def test_any_value_of_any_config_key(key, value):
    section, name = key.split(".")
    try:
        cfg = config_from_dict({section: {name: value}})
    except ConfigError as err:
        one_clean_line(str(err), key, "model.", "data.")  # a cross-key check names the key it needs
        return
    got = getattr(getattr(cfg, section), name)
    assert type(got) is type(getattr(getattr(Config(), section), name))
    if isinstance(got, float):
        assert math.isfinite(got)
    spec = {f.name: f for f in dataclasses.fields(getattr(Config(), section))}[name]
    bounds = spec.metadata["range"]
    if bounds is not None:
        bounds.check(key, got)  # a ConfigError here: accepted out of range


@SLOW
@given(key=st.sampled_from(KEYS + ["model.hidden", "train", "x.y.z", ""]), text=TYPED)
def test_any_set_override_and_any_yaml_file(key, text, tmp_path_factory):
    try:
        load_config(None, [f"{key}={text}"])
    except ConfigError as err:
        one_clean_line(str(err), "--set", key or "--set")
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    nested = f"{key.split('.')[0]}:\n  {key.split('.')[-1]}: {text}\n"
    path.write_text(nested if "." in key else text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as err:
        one_clean_line(str(err), str(path))


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


@settings(SLOW, max_examples=60)
@given(options=st.dictionaries(st.sampled_from(DECODE_KEYS), WILD, max_size=3))
def test_any_decoding_keyword_argument(translator, options):
    sentences = ["a b c", "", "t s r q"]
    try:
        found = translator.hypotheses(sentences, **options)
    except ConfigError as err:
        one_clean_line(str(err), *(f"decode.{k}" for k in options))
        return
    decode = dataclasses.replace(translator.decode,
                                 **{k: v for k, v in options.items() if v is not None})
    assert [len(hyps) for hyps in found] == [decode.n_best, 0, decode.n_best]


FLAGS = ["--beam-size", "--batch-size", "--length-penalty", "--max-length-ratio", "--n-best",
         "--device", "--checkpoint"]


@settings(SLOW, max_examples=40)
@given(flags=st.dictionaries(st.sampled_from(FLAGS), TYPED, max_size=3))
def test_any_translate_flag(reversal_run, flags, capsys, monkeypatch, tmp_path_factory):
    source = tmp_path_factory.mktemp("in") / "in.txt"
    source.write_text("a b c\n\nt s r\n")
    argv = [str(reversal_run), "-i", str(source)]
    argv += [f"{flag}={value}" for flag, value in flags.items()]
    try:
        status = translate_main(argv)
    except SystemExit as stop:  # argparse: a value of the wrong type
        status = stop.code
    out, err = capsys.readouterr()
    assert status in (0, 2), err
    if status == 0:
        assert len(out.splitlines()) == 3
    elif err.startswith("nmt-translate: error:"):
        one_clean_line(err.strip(), "nmt-translate: error:")
    else:
        assert err.startswith("usage:") and "Traceback" not in err, err  # argparse's two lines


@settings(SLOW, max_examples=40)
@given(key=st.sampled_from(KEYS), value=TYPED)
def test_any_training_option_trains_or_is_refused(reversal_data, key, value, capsys,
                                                   tmp_path_factory):
    """The whole command with one option set to a random value: it trains (a few steps) or
    says why not in one line."""
    base = reversal_config(reversal_data, train__max_steps=3, train__valid_every=2,
                           train__max_minutes=0.2, model__embedding_size=16,
                           model__encoder_hidden_size=16, model__decoder_hidden_size=16,
                           decode__beam_size=2)
    folder = tmp_path_factory.mktemp("fuzz")
    config = folder / "c.yaml"
    config.write_text(yaml.safe_dump(base))
    # A random hub name fails fast.
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    here = os.getcwd()
    os.chdir(folder)  # a relative path drawn for data.cache_dir (say) lands in the test's folder
    try:
        status = train_main([str(config), "--run-dir", str(folder / "run"), "--no-test",
                             "--set", f"{key}={value}"])
    finally:
        os.chdir(here)
    err = capsys.readouterr().err
    event(f"exit status {status}")  # --hypothesis-show-statistics: how many trained
    assert "Traceback" not in err and status in (0, 2), err
    if status == 2:
        one_clean_line(err.strip().splitlines()[-1], "nmt-train: error:")


@settings(SLOW, max_examples=30)
@given(key=st.sampled_from([f.name for f in dataclasses.fields(SineConfig)] + ["unknown"]),
       value=TYPED)
def test_any_sine_forecast_setting(key, value, capsys, tmp_path_factory):
    out = tmp_path_factory.mktemp("sine")
    status = forecast_main(["--set", "steps=2", "--set", "threads=2", "--set", f"{key}={value}",
                            "--out", str(out)])
    err = capsys.readouterr().err
    assert status in (0, 2) and "Traceback" not in err, err
    if status == 2:
        one_clean_line(err.strip(), "forecast_sine: error:")
    torch.set_num_threads(2)


def test_validation_decodes_greedily_with_every_search_control_at_its_default():
    """A rule on each option (``validation``), not a hand list: a control a config sets does not
    reach validation BLEU unless the option keeps the config's value (lengths, batch size)."""
    from dataclasses import fields, replace

    from nmt.config import KEEP, DecodeConfig, validation_decode
    changed = replace(DecodeConfig(), beam_size=7, n_best=3, length_penalty=0.5, min_length=2,
                      no_repeat_ngram_size=3, samples=2, temperature=0.5, top_k=4, top_p=0.5,
                      seed=9, max_length_ratio=1.5, max_length=80, batch_size=16, markup="keep")
    greedy = validation_decode(changed)
    for spec in fields(DecodeConfig):
        rule = spec.metadata["validation"]
        want = (getattr(changed, spec.name) if rule == KEEP
                else spec.default if rule is None else rule)
        assert getattr(greedy, spec.name) == want, spec.name
    assert (greedy.beam_size, greedy.n_best, greedy.samples, greedy.min_length) == (1, 1, 0, 0)
    assert (greedy.max_length_ratio, greedy.max_length, greedy.batch_size) == (1.5, 80, 16)
