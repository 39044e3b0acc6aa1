"""Training under faults: kill -9, a full disk, a crash; checkpoints by time; logs after resume."""
import errno
import json
import os
import shutil

import pytest
import torch
import yaml

from nmt.checkpoint import load_checkpoint
from nmt.cli import train_main
from nmt.config import config_from_dict
from nmt.train import Trainer, train

from conftest import SMALL_MODEL, kill_9_at_a_random_step, reversal_config

# A run of a few seconds: small enough to kill, train and compare many times.
SMALL = {"train__max_steps": 40, "train__valid_every": 15, "train__log_every": 5,
         "train__batch_size": 300, "model__dropout": 0.3, **SMALL_MODEL}


def state(run_dir):
    """Everything a run's last checkpoint holds that decides what it computes next."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ckpt["model"], ckpt["optimizer"]["state"], ckpt["train_state"], ckpt["rng"]["cpu"]


def assert_same_run(a, b):
    model_a, opt_a, ts_a, rng_a = state(a)
    model_b, opt_b, ts_b, rng_b = state(b)
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    drop = ("train_seconds",)
    assert {k: v for k, v in ts_a.items() if k not in drop} == \
        {k: v for k, v in ts_b.items() if k not in drop}
    assert all(torch.equal(x, y) for x, y in zip(rng_a, rng_b))


def metric_steps(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if key in row]


def tensorboard_steps(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def straight(reversal_data, tmp_path_factory):
    """The uninterrupted run, checkpointed only at validations."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    settings = dict(SMALL, train__checkpoint_every_minutes=0)
    train(config_from_dict(reversal_config(reversal_data, **settings)), run_dir)
    return run_dir


def test_checkpoints_by_time_change_nothing(reversal_data, straight, tmp_path, monkeypatch):
    saves = []
    original = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self, paths, **kw: (saves.append(self.state.step),
                                                                    original(self, paths, **kw)))
    often = reversal_config(reversal_data, **dict(SMALL, train__checkpoint_every_minutes=1e-9))
    train(config_from_dict(often), tmp_path / "often")
    assert saves == list(range(1, 41)) + [40]  # every step (by time or at validations), and the end
    assert_same_run(straight, tmp_path / "often")


def test_kill_9_at_a_random_step_then_resume_is_bit_identical(reversal_data, straight, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(reversal_config(
        reversal_data, **dict(SMALL, train__checkpoint_every_minutes=1e-9))))
    run_dir, last = tmp_path / "killed", tmp_path / "killed" / "checkpoints" / "last.pt"
    kill_9_at_a_random_step([shutil.which("nmt-train"), str(config), "--run-dir", str(run_dir),
                             "--no-test"], last, 40)
    assert train_main([str(config), "--run-dir", str(run_dir), "--resume", "--no-test"]) == 0
    assert_same_run(straight, run_dir)
    assert metric_steps(run_dir, "train_loss") == metric_steps(straight, "train_loss")
    assert tensorboard_steps(run_dir, "train/loss") == [5, 10, 15, 20, 25, 30, 35, 40]


def test_after_a_crash_the_resumed_run_logs_each_step_once(reversal_data, straight, tmp_path,
                                                           monkeypatch):
    """A crash at step 27 (last checkpoint: step 15) and a resume: steps 16-27 are trained
    and logged again, and the logs hold each step once, as the uninterrupted run's do."""
    cfg = config_from_dict(reversal_config(reversal_data,
                                           **dict(SMALL, train__checkpoint_every_minutes=0)))
    original = Trainer.step

    def crashing(self, group):
        if self.state.step == 27:
            raise RuntimeError("power cut")
        original(self, group)

    monkeypatch.setattr(Trainer, "step", crashing)
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, tmp_path / "run")
    assert metric_steps(tmp_path / "run", "train_loss") == [5, 10, 15, 20, 25]
    monkeypatch.setattr(Trainer, "step", original)
    train(cfg, tmp_path / "run", resume=True)
    for key in ("train_loss", "valid_bleu"):
        assert metric_steps(tmp_path / "run", key) == metric_steps(straight, key)
    assert tensorboard_steps(tmp_path / "run", "train/loss") == [5, 10, 15, 20, 25, 30, 35, 40]
    assert tensorboard_steps(tmp_path / "run", "valid/bleu") == [15, 30]
    assert_same_run(straight, tmp_path / "run")


def test_a_full_disk_while_checkpointing_is_reported_and_resumable(reversal_data, straight,
                                                                    tmp_path, monkeypatch, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(reversal_config(
        reversal_data, **dict(SMALL, train__checkpoint_every_minutes=0))))
    run_dir = tmp_path / "run"
    real_save, saves = torch.save, []

    def disk_fills_at_the_second_checkpoint(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:  # (step 15: last.pt, best.pt; step 30: last.pt) part of it, then full
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_the_second_checkpoint)
    assert train_main([str(config), "--run-dir", str(run_dir), "--no-test"]) == 2
    everything = capsys.readouterr().err
    assert "Traceback" not in everything
    err = everything.strip().splitlines()[-1]  # after the run's log lines
    assert err.startswith(f"nmt-train: error: {run_dir}/checkpoints/last.pt: no space left on "
                          "the device; free some space; ")
    assert f"'nmt-train --resume --run-dir {run_dir}' continues from it" in err
    intact = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert intact["train_state"]["step"] == 15
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert train_main([str(config), "--run-dir", str(run_dir), "--resume", "--no-test"]) == 0
    assert_same_run(straight, run_dir)


class RunsCode:
    """A pickle that runs a command when loaded with the full unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_is_refused_without_running_it(reversal_run, tmp_path):
    from nmt.translate import Translator
    from nmt.errors import CheckpointError

    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"model": RunsCode(marker), "config": {}, "vocab": {}, "train_state": {}}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot read checkpoint"):
        Translator.load(reversal_run, checkpoint=str(evil))
    assert not marker.exists()


def test_yaml_tags_never_run_code(tmp_path):
    from nmt.config import load_config
    from nmt.errors import ConfigError

    marker, config = tmp_path / "ran", tmp_path / "evil.yaml"
    config.write_text(f'train: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml: line 1: invalid YAML"):
        load_config(config)
    assert not marker.exists()


def test_a_model_too_large_for_the_machine_is_refused_before_allocating(reversal_data, tmp_path,
                                                                         capsys):
    config = tmp_path / "huge.yaml"
    config.write_text(yaml.safe_dump(reversal_config(
        reversal_data, model__encoder_layers=64, model__encoder_hidden_size=16384)))
    assert train_main([str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nmt-train: error: model: "), err
    assert "parameters need" in err and "GiB" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_directory_that_vanishes_mid_run_is_one_line(reversal_data, tmp_path, monkeypatch,
                                                           capsys):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(reversal_config(reversal_data, **SMALL)))
    run_dir = tmp_path / "run"
    original = Trainer.log_progress

    def deleted_by_someone(self):
        if self.state.step == 20:
            shutil.rmtree(run_dir)
        original(self)

    monkeypatch.setattr(Trainer, "log_progress", deleted_by_someone)
    assert train_main([str(config), "--run-dir", str(run_dir), "--no-test"]) == 2
    everything = capsys.readouterr().err
    assert "Traceback" not in everything
    assert (f"nmt-train: error: {run_dir}/metrics.jsonl: no such file or folder (did it vanish "
            "while nmt ran?)") in everything.splitlines()
