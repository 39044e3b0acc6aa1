"""Checkpoint averaging: nmt-average's result equals the mean computed by hand."""
import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.rundir import RunDir
from nmt.cli import average_main
from nmt.config import config_from_dict
from nmt.train import train
from nmt.translate import Translator

from conftest import SMALL_MODEL, reversal_config

SMALL = {"train__max_steps": 40, "train__valid_every": 10, "train__batch_size": 300,
         "train__keep_checkpoints": 3, **SMALL_MODEL}


@pytest.fixture(scope="module")
def run(reversal_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("avg") / "run"
    train(config_from_dict(reversal_config(reversal_data, **SMALL)), run_dir)
    return run_dir


def test_a_run_keeps_its_last_validation_checkpoints_with_their_bleu(run):
    kept = RunDir(run).step_checkpoints()
    assert [p.name for p in kept] == ["step-20.pt", "step-30.pt", "step-40.pt"]
    assert all(isinstance(load_checkpoint(p)["valid_bleu"], float) for p in kept)
    last = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(last[k], load_checkpoint(kept[-1])["model"][k]) for k in last)


def test_averaging_equals_the_mean_by_hand(run, capsys):
    assert average_main([str(run), "--last", "2"]) == 0
    assert "averaged 2 checkpoints (step-30.pt, step-40.pt)" in capsys.readouterr().out
    a = load_checkpoint(run / "checkpoints" / "step-30.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "step-40.pt")["model"]
    averaged = load_checkpoint(run / "checkpoints" / "averaged.pt")
    for key in a:
        by_hand = ((a[key].double() + b[key].double()) / 2).float()
        assert torch.equal(averaged["model"][key], by_hand), key
    assert averaged["train_state"]["step"] == 40
    translator = Translator.load(run, checkpoint="averaged")
    assert isinstance(translator.translate("a b c"), str)


def test_best_n_and_named_checkpoints(run, tmp_path):
    bleus = {p.name: load_checkpoint(p)["valid_bleu"] for p in RunDir(run).step_checkpoints()}
    best = max(bleus, key=lambda name: (bleus[name], -int(name[5:-3])))
    out = tmp_path / "best1.pt"
    assert average_main([str(run), "--best", "1", "-o", str(out)]) == 0
    mine, theirs = load_checkpoint(out)["model"], load_checkpoint(run / "checkpoints" / best)["model"]
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # the mean of one is itself
    out2 = tmp_path / "two.pt"
    assert average_main([str(run), "--checkpoints", "step-20", "last", "-o", str(out2)]) == 0
    assert load_checkpoint(out2)["averaged_from"][1].endswith("last.pt")


def test_averaging_refuses_what_it_cannot_do(run, reversal_data, tmp_path, capsys):
    assert average_main([str(run), "--last", "5"]) == 2
    assert "3 kept checkpoints (step-*.pt), 5 wanted" in capsys.readouterr().err
    other = tmp_path / "other"
    train(config_from_dict(reversal_config(reversal_data, **dict(SMALL, train__max_steps=10,
                                                                  model__embedding_size=16))), other)
    assert average_main([str(run), "--checkpoints", "last", str(other / "checkpoints" / "last.pt"),
                         "-o", str(tmp_path / "x.pt")]) == 2
    assert "another model or vocabulary" in capsys.readouterr().err
    assert average_main([str(run), "--checkpoints", "step-30", "averaged", "-o",
                         str(run / "checkpoints" / "step-30.pt")]) == 2
    assert "is the same file as the input" in capsys.readouterr().err


def test_checkpoints_with_and_without_a_moving_average_are_not_mixed(reversal_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    settings = dict(SMALL, train__max_steps=20)
    train(config_from_dict(reversal_config(reversal_data, **settings)), run_dir)
    train(config_from_dict(reversal_config(reversal_data, **dict(settings, train__max_steps=30,
                                                                  train__ema=0.9))), run_dir, resume=True)
    assert average_main([str(run_dir), "--last", "2"]) == 2
    err = capsys.readouterr().err
    assert "step-30.pt holds a moving average of the weights (train.ema) but" in err and "step-20.pt" in err
