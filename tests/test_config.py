import re

import pytest

from nmt.config import Config, config_from_dict, load_config, save_config
from nmt.errors import ConfigError


def test_defaults_and_shipped_configs_load():
    assert isinstance(config_from_dict({}), Config)
    for name in ("demo", "multi30k_de_en", "multi30k_en_de"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.data.loader == "text"


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
    with pytest.raises(ConfigError, match="model.attention: 'luong' is not one of dot, general, mlp"):
        config_from_dict({"model": {"attention": "luong"}})
    with pytest.raises(ConfigError, match="model: expected a section"):
        config_from_dict({"model": 3})


def test_floats_accept_yaml_exponent_strings_and_ints():
    cfg = config_from_dict({"train": {"lr": "1e-3", "min_lr": 0}})
    assert cfg.train.lr == 0.001 and cfg.train.min_lr == 0.0


def test_dotted_overrides():
    cfg = config_from_dict({}, ["model.decoder_hidden_size=512", "model.tie_output=false", "train.lr=5e-4",
                                "data.src_lang=en", "model.bidirectional=false"])
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
        config_from_dict({"model": {"attention": "dot", "decoder_hidden_size": 100, "tie_output": False}})
    with pytest.raises(ConfigError, match="model.dropout"):
        config_from_dict({"model": {"dropout": 1.0}})
    with pytest.raises(ConfigError, match=r"train.batch_size: 0 is out of range; expected a value in \[1, "):
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
    for section, key, value, message in [
            ("train", "warmup_steps", -1, "train.warmup_steps: -1 is out of range; expected a value in [0, "),
            ("train", "lr_decay", 0.0, "train.lr_decay: 0.0 is out of range; expected a value in (0.0, 1.0]"),
            ("train", "lr_patience", 0, "train.lr_patience: 0 is out of range; expected a value in [1, "),
            ("data", "max_len_ratio", 0.5, "data.max_len_ratio: 0.5 is out of range; expected a value in [1.0, "),
            ("decode", "max_length_ratio", 0.0,
             "decode.max_length_ratio: 0.0 is out of range; expected a value in (0.0, "),
            ("train", "lr", float("nan"), "train.lr: must be a finite number, got nan"),
            ("train", "max_minutes", "inf", "train.max_minutes: must be a finite number, got inf"),
            ("train", "clip_grad_norm", 10**400, "train.clip_grad_norm: must be a finite number"),
            ("model", "encoder_hidden_size", 2560000, "model.encoder_hidden_size: 2560000 is out of range"),
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
