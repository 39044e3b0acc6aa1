"""The run directory's paths, the checkpoint's fields, metrics.jsonl and the schedule (no training)."""
import json

import pytest
import torch

from nmt.checkpoint import Checkpoint, TrainState
from nmt.rundir import Metric, RunDir
from nmt.config import TrainConfig
from nmt.errors import CheckpointError
from nmt.schedule import Schedule, ScheduleState

# The keys a training checkpoint has had on disk (train.ema adds "ema"; nmt-average writes
# model, config, vocab, train_state and averaged_from).
TRAINING_KEYS = {"model", "optimizer", "train_state", "config", "bf16", "rng", "vocab", "valid_bleu",
                 "corpus"}
TRAIN_STATE_KEYS = {"step", "epoch", "batch_in_epoch", "best_bleu", "best_step", "bad_validations",
                    "lr_bad_validations", "lr_scale", "stopped_early", "train_seconds", "target_tokens",
                    "sentences"}


def training_payload() -> dict:
    return {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []},
            "train_state": {key: 0 for key in TRAIN_STATE_KEYS} | {"step": 7, "lr_scale": 0.5},
            "config": {"model": {}}, "bf16": False, "rng": {"cpu": [torch.get_rng_state()], "cuda": [None]},
            "vocab": {"src": {}, "tgt": {}}, "valid_bleu": 12.5, "corpus": "corpus-abc"}


def test_a_payload_of_today_reads_and_writes_back_the_same_keys():
    payload = training_payload()
    ckpt = Checkpoint.from_payload(payload)
    assert ckpt.progress.step == 7 and ckpt.schedule.lr_scale == 0.5 and ckpt.valid_bleu == 12.5
    again = ckpt.to_payload()
    assert again.keys() == TRAINING_KEYS and again["train_state"].keys() == TRAIN_STATE_KEYS
    assert again["train_state"] == payload["train_state"] and again["rng"]["cuda"] == [None]


def test_an_averaged_checkpoint_has_no_training_fields_and_a_non_checkpoint_is_refused():
    ckpt = Checkpoint(model={}, config={}, vocab={}, progress=TrainState(step=3), schedule=ScheduleState(),
                      averaged_from=["a.pt"])
    assert ckpt.to_payload().keys() == {"model", "config", "vocab", "train_state", "averaged_from"}
    with pytest.raises(CheckpointError, match="x.pt: not an nmt checkpoint"):
        Checkpoint.from_payload({"model": {}}, "x.pt")


def test_step_checkpoints_are_named_and_found_in_step_order(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    for step in (100, 20, 3):
        run.step_checkpoint(step).write_bytes(b"")
    (run.checkpoints / "step-x.pt").write_bytes(b"")
    assert [p.name for p in run.step_checkpoints()] == ["step-3.pt", "step-20.pt", "step-100.pt"]
    run.drop_step_checkpoints_before_the_last(2)
    assert [p.name for p in run.step_checkpoints()] == ["step-20.pt", "step-100.pt"]
    assert RunDir.of_checkpoint(run.best).root == tmp_path and RunDir.of_checkpoint(tmp_path / "a.pt") is None


def test_metrics_forget_the_steps_after_a_resume_and_skip_a_line_cut_short(tmp_path):
    metrics = RunDir(tmp_path).metrics
    for step in (5, 10, 15):
        metrics.append(step, {Metric.TRAIN_LOSS: float(step)})
    metrics.append(10, {Metric.VALID_BLEU: 1.0})
    with open(metrics.path, "a") as f:
        f.write('{"step": 2')  # a kill while writing
    assert metrics.curves() == {Metric.TRAIN_LOSS: [(5, 5.0), (10, 10.0), (15, 15.0)],
                                Metric.VALID_BLEU: [(10, 1.0)]}
    metrics.forget_after(10)
    assert [json.loads(line)["step"] for line in metrics.path.read_text().splitlines()] == [5, 10, 10]
    assert Metric.tag(Metric.TRAIN_SPEED) == "train/target_tokens_per_s"


def test_the_schedule_warms_up_decays_on_a_plateau_and_stops_early():
    settings = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, lr_patience=2, lr_decay=0.5, patience=3)
    schedule = Schedule(settings)
    assert schedule.learning_rate(5) == 0.5 and schedule.learning_rate(20) == 1.0
    assert schedule.validated(10.0, step=100) and schedule.state.best_step == 100
    assert not schedule.validated(9.0, step=200) and schedule.state.lr_scale == 1.0
    assert not schedule.validated(9.0, step=300) and schedule.state.lr_scale == 0.5
    assert not schedule.state.stopped_early
    schedule.validated(9.0, step=400)
    assert schedule.state.stopped_early and schedule.state.best_bleu == 10.0
    # on a resume with more patience the run goes on; the decayed rate stays
    resumed = Schedule(TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, patience=5), schedule.state)
    assert not resumed.state.stopped_early and resumed.learning_rate(400) == 0.5
