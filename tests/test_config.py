import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from nmt.config import (Config, Direction, Range, config_from_dict, config_text, fill, load_config,
                        read_yaml, save_config)
from nmt.errors import ConfigError
from forecast_sine import SineConfig, check

CONFIGS = sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml"))
SECTIONS = [Direction] + [type(section) for section in vars(Config()).values()]


def test_defaults_and_shipped_configs_load():
    assert isinstance(config_from_dict({}), Config)
    for name in ("demo", "multi30k_de_en", "multi30k_en_de"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.data.loader == "text"


def test_every_option_declares_its_help_and_its_range_or_choices():
    for spec in (spec for section in SECTIONS for spec in dataclasses.fields(section)):
        key, default = spec.name, spec.default
        assert spec.metadata["help"] and "%" not in spec.metadata["help"], key  # argparse: %
        bounds, choices = spec.metadata["range"], spec.metadata["choices"]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert isinstance(bounds, Range), key  # every number has a range ...
            bounds.check(key, default)  # ... that holds its default
        else:
            assert bounds is None, key
        assert choices is None or default in choices, key


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "sine.yaml"],
                         ids=lambda p: p.name)
def test_shipped_configs_are_written_from_the_options(path):
    """Each comment is its key's help, each value as loaded, in the order of the fields."""
    assert path.read_text(encoding="utf-8") == config_text(path), (
        f"{path.name}: rewrite it with Path(p).write_text(nmt.config.config_text(p))")


def test_the_sine_config_sets_real_settings_in_range():
    path = next(p for p in CONFIGS if p.name == "sine.yaml")
    values = read_yaml(path)
    assert set(values) <= {spec.name for spec in dataclasses.fields(SineConfig)}
    assert check(fill(SineConfig(), values)) == SineConfig(**values)


def test_config_text_writes_what_it_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# a header line\ndecode: {beam_size: 3}\nmodel:\n  cell: gru\ndata:\n"
                    "  directions: [de-en, {src: en, tgt: de, train: bt/train, tag: <BT>}]\n"
                    "  cache_dir: ''\n", encoding="utf-8")
    text = config_text(path)
    assert text.startswith("# a header line\ndata:\n  cache_dir: ''")  # the fields' order
    assert max(map(len, text.splitlines())) <= 100
    assert ("  directions: [{src: de, tgt: en}, {src: en, tgt: de, train: bt/train, tag: <BT>}]"
            in text)
    assert "  beam_size: 3                  # hypotheses kept at each step; 1 = greedy\n" in text
    before = load_config(path)
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == before and config_text(path) == text
    assert set(yaml.safe_load(text)["data"]) == {"directions", "cache_dir"}


def test_every_default_key_is_documented_in_the_demo_config():
    text = open("configs/demo.yaml", encoding="utf-8").read()
    for section, values in Config().to_dict().items():
        for key in values:
            if section == "data" and key in ("src_field", "tgt_field", "hub_config"):
                continue  # only for datasets loaders; documented in nmt/config.py
            assert f"  {key}:" in text, f"{section}.{key} missing from configs/demo.yaml"


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hiden_size: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'model\.hiden_size'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'model.dropout'"):
        config_from_dict({"model": {"dropuot": 0.1}})
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        config_from_dict({"modle": {}})


def test_wrong_types_are_rejected_naming_the_key():
    with pytest.raises(ConfigError, match="model.embedding_size: expected int, got 'big'"):
        config_from_dict({"model": {"embedding_size": "big"}})
    with pytest.raises(ConfigError, match="model.bidirectional: expected bool"):
        config_from_dict({"model": {"bidirectional": 1}})
    with pytest.raises(ConfigError, match="train.seed: expected int, got 1.5"):
        config_from_dict({"train": {"seed": 1.5}})
    with pytest.raises(ConfigError,
                       match="model.attention: 'luong' is not one of dot, general, mlp"):
        config_from_dict({"model": {"attention": "luong"}})
    with pytest.raises(ConfigError, match="model: expected a section"):
        config_from_dict({"model": 3})


def test_floats_accept_yaml_exponent_strings_and_ints():
    cfg = config_from_dict({"train": {"lr": "1e-3", "min_lr": 0}})
    assert cfg.train.lr == 0.001 and cfg.train.min_lr == 0.0


def test_dotted_overrides():
    cfg = config_from_dict({}, ["model.decoder_hidden_size=512", "model.tie_output=false",
                                "train.lr=5e-4", "data.src_lang=en", "model.bidirectional=false"])
    assert cfg.model.decoder_hidden_size == 512 and cfg.train.lr == 5e-4
    assert cfg.data.src_lang == "en" and cfg.model.bidirectional is False
    with pytest.raises(ConfigError, match="--set model.hidden=3: unknown key 'model.hidden'"):
        config_from_dict({}, ["model.hidden=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config_from_dict({}, ["model.dropout"])


def test_inconsistent_settings_name_their_keys():
    with pytest.raises(ConfigError, match="model.share_embeddings: needs data.joint_vocab"):
        config_from_dict({"model": {"share_embeddings": True}, "data": {"joint_vocab": False}})
    with pytest.raises(ConfigError, match="model.tie_output"):
        config_from_dict({"model": {"tie_output": True, "embedding_size": 100}})
    with pytest.raises(ConfigError, match="model.attention: dot needs"):
        config_from_dict({"model": {"attention": "dot", "decoder_hidden_size": 100,
                                    "tie_output": False}})
    with pytest.raises(ConfigError, match="model.dropout"):
        config_from_dict({"model": {"dropout": 1.0}})
    with pytest.raises(ConfigError,
                       match=r"train.batch_size: 0 is out of range; expected a value in \[1, "):
        config_from_dict({"train": {"batch_size": 0}})


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  dropout: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+: invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = config_from_dict({}, ["model.cell=gru", "train.lr=0.003"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_ranges_and_devices_are_checked():
    expected = "is out of range; expected a value in"
    for section, key, value, message in [
            ("train", "warmup_steps", -1, f"train.warmup_steps: -1 {expected} [0, "),
            ("train", "lr_decay", 0.0, f"train.lr_decay: 0.0 {expected} (0.0, 1.0]"),
            ("train", "lr_patience", 0, f"train.lr_patience: 0 {expected} [1, "),
            ("data", "max_len_ratio", 0.5, f"data.max_len_ratio: 0.5 {expected} [1.0, "),
            ("decode", "max_length_ratio", 0.0, f"decode.max_length_ratio: 0.0 {expected} (0.0, "),
            ("train", "lr", float("nan"), "train.lr: must be a finite number, got nan"),
            ("train", "max_minutes", "inf", "train.max_minutes: must be a finite number, got inf"),
            ("train", "clip_grad_norm", 10**400, "train.clip_grad_norm: must be a finite number"),
            ("model", "encoder_hidden_size", 2560000,
             "model.encoder_hidden_size: 2560000 is out of range"),
            ("data", "src_lang", "", "data.src_lang: '' is not a language code"),
            ("data", "train", "corpus\0", "data.train: expected str"),
            ("decode", "n_best", 6, "decode.n_best: 6 exceeds decode.beam_size (5)"),
            ("train", "device", "gpu", "train.device: 'gpu' is not auto, cpu, cuda or cuda:N")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_from_dict({section: {key: value}})
    assert config_from_dict({"train": {"device": "cuda:1"}}).train.device == "cuda:1"


def test_unreadable_config_files(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model:\n  cell: lstm # Grüße\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: invalid UTF-8"):
        load_config(latin1)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
