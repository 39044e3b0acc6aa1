"""Fine-tuning (train.init_from, nmt-train --init-from): a new run that starts from a trained
model's weights and vocabulary, from a run directory, a checkpoint or a model folder."""
import hashlib
import shutil

import pytest

from nmt.checkpoint import load_checkpoint
from nmt.cli import export_main, train_main
from nmt.config import config_from_dict, load_config, save_config
from nmt.errors import ConfigError
from nmt.io import read_lines
from nmt.train import train
from nmt.translate import Translator

from conftest import (REVERSAL_WORDS, kill_9_at_a_random_step, same_last_checkpoints, reversal_config,
                      reversal_pairs, write_split)

SHORT = {"train__max_steps": 10, "train__valid_every": 10, "train__batch_size": 400, "model__dropout": 0.3,
         "train__lr": 3e-4,  # fine-tuning: a tenth of the learning rate the source trained with
         "model__input_feeding": False}  # the source's model (conftest's reversal_run)


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    """Other sentences of the same task: the new (in-domain) data."""
    folder = tmp_path_factory.mktemp("new-data")
    return {name: write_split(folder, name, *reversal_pairs(n, seed, REVERSAL_WORDS))
            for name, n, seed in (("train", 600, 21), ("valid", 50, 22), ("test", 50, 23))}


def accuracy(run_dir, data) -> float:
    src, tgt = read_lines(data["test"] + ".src"), read_lines(data["test"] + ".tgt")
    out = Translator.load(run_dir).translate(src, beam_size=1)
    return sum(a == b for a, b in zip(out, tgt)) / len(tgt)


@pytest.mark.parametrize("kind", ["run", "checkpoint", "folder"])
def test_fine_tuning_starts_from_the_sources_weights_and_vocabulary(reversal_run, new_data, tmp_path, kind):
    source = {"run": reversal_run, "checkpoint": reversal_run / "checkpoints" / "best.pt",
              "folder": tmp_path / "folder"}[kind]
    if kind == "folder":
        assert export_main([str(reversal_run), str(source)]) == 0
    weights = source / "model.safetensors" if kind == "folder" else reversal_run / "checkpoints" / "best.pt"
    run = tmp_path / "tuned"
    train(config_from_dict(reversal_config(new_data, **SHORT, train__init_from=str(source))), run)
    # 10 steps from scratch translate nothing; from the source, nearly everything.
    assert accuracy(run, new_data) > 0.8
    tuned, original = Translator.load(run), Translator.load(reversal_run)
    for side in ("src_vocab", "tgt_vocab"):  # the source's vocabulary: the cache was encoded with it
        assert getattr(tuned, side).fingerprint == getattr(original, side).fingerprint
    recorded = load_config(run / "config.yaml").train
    assert recorded.init_from == str(source.resolve())
    assert recorded.init_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "fine-tuning from" in log and "start fresh" in log and "training sentencepiece" not in log
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 10  # the step starts at 0


def test_from_scratch_the_same_steps_learn_little(new_data, tmp_path):
    """The check above has teeth: without the source, 10 steps do not translate."""
    train(config_from_dict(reversal_config(new_data, **SHORT)), tmp_path / "scratch")
    assert accuracy(tmp_path / "scratch", new_data) < 0.2


def test_a_mismatched_source_is_refused_before_anything_is_written(reversal_run, new_data, tmp_path):
    run = tmp_path / "refused"
    cases = [({"model__decoder_hidden_size": 128},
              r"model\.decoder_hidden_size: 128 in this config, 256 in .*best\.pt"),
             ({"model__cell": "gru"}, r"model\.cell: 'gru' in this config, 'lstm'"),
             ({"data__joint_vocab": not load_config(reversal_run / "config.yaml").data.joint_vocab},
              r"data\.joint_vocab: .* fine-tuning keeps its vocabulary"),
             ({"train__init_sha256": "0" * 64}, r"train\.init_sha256: .* has sha256 [0-9a-f]{64}, not the 0000")]
    for overrides, message in cases:
        cfg = config_from_dict(reversal_config(new_data, **SHORT, train__init_from=str(reversal_run), **overrides))
        with pytest.raises(ConfigError, match=message):
            train(cfg, run)
        assert not run.exists()


def test_a_fine_tuning_run_resumes_bit_for_bit(reversal_run, new_data, tmp_path):
    both = dict(SHORT, train__max_steps=20, train__init_from=str(reversal_run))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config_from_dict(reversal_config(new_data, **both)), straight)
    train(config_from_dict(reversal_config(new_data, **dict(both, train__max_steps=10))), resumed)
    # The resumed run continues from its own checkpoint (its config names the source, as it was).
    train(config_from_dict(reversal_config(new_data, **both)), resumed, resume=True)
    assert same_last_checkpoints(straight, resumed)["step"] == 20


def test_a_fine_tuning_run_killed_at_a_random_step_resumes_bit_for_bit(reversal_run, new_data, tmp_path):
    both = dict(SHORT, train__max_steps=16, train__init_from=str(reversal_run))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(config_from_dict(reversal_config(new_data, **both)), straight)
    config = tmp_path / "tune.yaml"
    save_config(config_from_dict(reversal_config(new_data, **dict(both, train__checkpoint_every_minutes=1e-9))),
                config)
    kill_9_at_a_random_step([shutil.which("nmt-train"), str(config), "--run-dir", str(killed), "--no-test"],
                            killed / "checkpoints" / "last.pt", 16)
    assert train_main(["--run-dir", str(killed), "--resume", "--no-test"]) == 0
    assert same_last_checkpoints(straight, killed)["step"] == 16


def test_the_command_takes_init_from_and_the_card_names_the_source(reversal_run, new_data, tmp_path, capsys):
    config = tmp_path / "tune.yaml"
    save_config(config_from_dict(reversal_config(new_data, **SHORT)), config)
    run = tmp_path / "cli-run"
    assert train_main([str(config), "--run-dir", str(run), "--init-from", str(reversal_run), "--no-test"]) == 0
    assert export_main([str(run), str(tmp_path / "card")]) == 0
    card = (tmp_path / "card" / "README.md").read_text(encoding="utf-8")
    assert f"Fine-tuned from `{reversal_run.name}`" in card
    capsys.readouterr()
    assert train_main([str(config), "--run-dir", str(tmp_path / "bad"), "--init-from", str(tmp_path / "nowhere"),
                       "--no-test"]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "bad").exists()
