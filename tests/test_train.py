import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml

from nmt import device
from nmt.checkpoint import load_checkpoint
from nmt.config import config_from_dict, load_config
from nmt.errors import CheckpointError, ConfigError
from nmt.train import Trainer, train
from nmt.translate import Translator
from nmt.vocab import train_vocab

from conftest import SMALL_MODEL, HostTransfers, reversal_config

TINY = {"train__max_steps": 40, "train__valid_every": 20, "train__batch_size": 400,
        "model__dropout": 0.3, **SMALL_MODEL}


def params(run_dir, name="last"):
    return load_checkpoint(run_dir / "checkpoints" / f"{name}.pt")["model"]


def test_fixed_seed_repeats_and_resume_continues_exactly(reversal_data, tmp_path):
    cfg = config_from_dict(reversal_config(reversal_data, **TINY))
    straight, again, resumed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    summary = train(cfg, straight)
    train(cfg, again)
    half = config_from_dict(reversal_config(reversal_data, **dict(TINY, train__max_steps=20)))
    train(half, resumed)
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["train_state"]["step"] == 20
    with pytest.raises(CheckpointError,
                       match=r"last\.pt: model\.dropout was 0\.3 in this run; it cannot change"):
        train(config_from_dict(reversal_config(reversal_data, **dict(TINY, model__dropout=0.2))),
              resumed, resume=True)
    assert load_config(resumed / "config.yaml").model.dropout == 0.3  # left as it was
    train(cfg, resumed, resume=True)
    a, b, c = params(straight), params(again), params(resumed)
    assert summary.steps == 40
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], c[key]), key
    sa = load_checkpoint(straight / "checkpoints" / "last.pt")
    sc = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for key in ("step", "epoch", "batch_in_epoch", "best_bleu", "lr_scale"):
        assert sa["train_state"][key] == sc["train_state"][key]
    assert all(torch.equal(x, y) for x, y in zip(sa["rng"]["cpu"], sc["rng"]["cpu"]))


def test_run_directory_contents(reversal_data, tmp_path):
    cfg = config_from_dict(reversal_config(reversal_data, **TINY))
    run = tmp_path / "run"
    train(cfg, run)
    assert load_config(run / "config.yaml") == cfg
    assert (run / "spm.model").is_file()
    assert (run / "train.log").read_text().count("valid loss") == 2
    assert any((run / "tensorboard").iterdir())
    leftovers = [p.name for p in (run / "checkpoints").iterdir()]
    assert sorted(leftovers) == ["best.pt", "last.pt"]  # no temporary files left behind
    facts = json.loads((run / "run.json").read_text())  # what export and reports read
    seconds = load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["train_seconds"]
    assert facts["steps"] == 40 and facts["train_minutes"] == round(seconds / 60, 2)
    assert facts["torch"] == torch.__version__
    assert f"parameters on {facts['hardware']}; run directory" in (run / "train.log").read_text()
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        train(cfg, run)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(cfg, tmp_path / "empty", resume=True)


def test_early_stopping_on_validation_bleu(reversal_data, tmp_path):
    cfg = config_from_dict(reversal_config(reversal_data, train__lr=1e-12, train__min_lr=1e-12,
                                           train__valid_every=5, train__patience=2,
                                           train__max_steps=100, train__batch_size=400))
    summary = train(cfg, tmp_path / "run")
    assert summary.stopped_early and summary.steps == 15 and summary.best_step == 5


def test_separate_vocabularies(reversal_data, tmp_path):
    cfg = config_from_dict(reversal_config(reversal_data, data__joint_vocab=False,
                                           train__max_steps=5, train__valid_every=5))
    train(cfg, tmp_path / "run")
    assert all((tmp_path / "run" / f"spm.{side}.model").is_file() for side in ("src", "tgt"))
    assert len(Translator.load(tmp_path / "run").translate(["a b"])) == 1


def test_vocabulary_mismatch_is_refused(reversal_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reversal_run, run)
    train_vocab(["ganz andere Sätze hier"] * 10, run / "spm.model", 280)
    with pytest.raises(CheckpointError,
                       match=r"best\.pt: src vocabulary .* does not match .*spm\.model"):
        Translator.load(run)


def test_missing_run_or_checkpoint(tmp_path, reversal_run):
    with pytest.raises(CheckpointError, match="run directory not found"):
        Translator.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"other\.pt: checkpoint not found"):
        Translator.load(reversal_run, checkpoint=str(tmp_path / "other.pt"))


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(reversal_data, tmp_path):
    settings = dict(TINY, train__log_every=1)
    cfg = config_from_dict(reversal_config(reversal_data, **settings))
    train(cfg, tmp_path / "straight")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(reversal_config(reversal_data, **settings)))
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([shutil.which("nmt-train"), str(config), "--run-dir", str(run_dir),
                             "--no-test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and "step 10 epoch" not in _text(run_dir / "train.log"):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["step"]
    assert 10 <= stopped < 40 and "interrupted at step" in _text(run_dir / "train.log")
    train(cfg, run_dir, resume=True)
    a, b = params(tmp_path / "straight"), params(run_dir)
    assert all(torch.equal(a[key], b[key]) for key in a)


def _text(path):
    return path.read_text() if path.exists() else ""


def test_a_step_needing_more_batches_than_an_epoch_is_refused(reversal_data, tmp_path):
    cfg = config_from_dict(reversal_config(reversal_data, train__accumulate=10000,
                                           train__max_steps=1))
    with pytest.raises(ConfigError, match="train.accumulate: a step needs 10000 batches"):
        train(cfg, tmp_path / "run")


def test_auto_precision_takes_native_bf16_and_still_resumes_exactly(reversal_data, tmp_path):
    """precision auto trains under bf16 autocast where the CPU has bf16 in hardware
    (AVX512-BF16 or AMX), fp32 elsewhere (AVX2, or held to it by ONEDNN_MAX_CPU_ISA);
    either way a resumed run ends with the parameters of an uninterrupted one."""
    settings = dict(TINY, train__precision="auto", train__max_steps=20, train__valid_every=10)
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(config_from_dict(reversal_config(reversal_data, **settings)), straight)
    half = dict(settings, train__max_steps=10)
    train(config_from_dict(reversal_config(reversal_data, **half)), resumed)
    train(config_from_dict(reversal_config(reversal_data, **settings)), resumed, resume=True)
    expected = "bf16 autocast" if device.native_bf16(torch.device("cpu")) else "fp32"
    assert f"), {expected}; run directory" in (straight / "train.log").read_text()
    a, c = params(straight), params(resumed)
    assert all(torch.equal(a[key], c[key]) for key in a)
    assert "will not match" not in (resumed / "train.log").read_text()


def test_resuming_in_the_other_precision_says_it_will_not_match(reversal_data, tmp_path):
    """A run started on a CPU with bf16 and resumed on one without (or the other way
    round) goes on, and says that it will not match an uninterrupted run. Simulated on
    any CPU by marking an fp32 checkpoint as trained in bf16."""
    settings = dict(TINY, train__precision="fp32", train__max_steps=10, train__valid_every=10)
    train(config_from_dict(reversal_config(reversal_data, **settings)), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["bf16"] = True
    torch.save(ckpt, last)
    train(config_from_dict(reversal_config(reversal_data, **dict(settings, train__max_steps=20))),
          tmp_path / "run", resume=True)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the run trained in bf16 and goes on in fp32: it will not match" in log
    assert load_checkpoint(last)["train_state"]["step"] == 20


def test_a_training_step_reads_nothing_back_from_the_device(reversal_data, tmp_path, monkeypatch):
    """On a GPU every host read inside a step makes the host wait for the device. A step
    (here with gradient accumulation and clipping) makes none; the loss is read once per
    log line. Counted on the CPU with the ops and tensor methods that would wait."""
    cfg = config_from_dict(reversal_config(reversal_data, **dict(TINY, train__accumulate=2)))
    trainer = Trainer(cfg, tmp_path / "run", resume=False)
    groups = [trainer.next_step_batches() for _ in range(3)]
    with monkeypatch.context() as patch, HostTransfers(patch) as counter:
        for group in groups:
            trainer.step(group)
    assert counter.count == 0 and trainer.state.step == 3
    with monkeypatch.context() as patch, HostTransfers(patch) as counter:
        trainer.log_progress()
    assert counter.count == 1
    trainer.finish("done")
