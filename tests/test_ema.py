"""train.ema: a moving average of the weights that validation, best.pt and decoding use,
saved and resumed exactly like everything else."""
import torch

from conftest import SMALL_MODEL, HostTransfers, reversal_config
from nmt.average import average
from nmt.checkpoint import decoding_weights, load_checkpoint
from nmt.loading import load_run
from nmt.config import config_from_dict
from nmt.train import Trainer, train

TINY = {"train__max_steps": 40, "train__valid_every": 20, "train__batch_size": 400,
        "model__dropout": 0.3, "train__ema": 0.9, **SMALL_MODEL}


def test_the_average_follows_its_formula_and_reads_nothing_back(reversal_data, tmp_path, monkeypatch):
    cfg = config_from_dict(reversal_config(reversal_data, **TINY))
    trainer = Trainer(cfg, tmp_path / "run", resume=False)
    expected = [p.detach().clone() for p in trainer.model.parameters()]  # it starts as the model
    for t in range(15):
        group = trainer.next_step_batches()
        with monkeypatch.context() as patch, HostTransfers(patch) as counter:
            trainer.step(group)
        assert counter.count == 0  # the update is device work only
        decay = min(0.9, (1 + t) / (10 + t))  # warming up: below 0.9 for the first 80 steps
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, trainer.model.parameters())]
    for got, want in zip(trainer.ema.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(trainer.ema.parameters(), trainer.model.parameters()))
    trainer.finish("done")


def test_ema_switched_on_at_a_resume_starts_from_the_weights(reversal_data, tmp_path):
    plain = dict(TINY, train__ema=0.0, train__max_steps=20)
    train(config_from_dict(reversal_config(reversal_data, **plain)), tmp_path / "run")
    train(config_from_dict(reversal_config(reversal_data, **dict(plain, train__ema=0.9))), tmp_path / "run",
          resume=True)  # no step left to take: the average is the weights, not a fresh model
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])
    assert "train.ema is new on this resume" in (tmp_path / "run" / "train.log").read_text()


def test_ema_resumes_exactly_and_decoding_uses_the_average(reversal_data, tmp_path):
    cfg = config_from_dict(reversal_config(reversal_data, **TINY))
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(cfg, straight)
    train(config_from_dict(reversal_config(reversal_data, **dict(TINY, train__max_steps=20))), resumed)
    train(cfg, resumed, resume=True)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, resumed))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    best = load_checkpoint(straight / "checkpoints" / "best.pt")
    loaded = load_run(straight).model.state_dict()
    averaged = decoding_weights(best)
    assert all(torch.equal(loaded[k], averaged[k]) for k in loaded)
    assert any(not torch.equal(averaged[k], best["model"][k]) for k in averaged)  # not the raw weights
    # nmt-average averages what each checkpoint decodes with: here the moving averages
    mean = average([straight / "checkpoints" / "best.pt", resumed / "checkpoints" / "last.pt"]).model
    other = decoding_weights(b)
    for k, value in mean.items():
        torch.testing.assert_close(value, ((averaged[k].double() + other[k].double()) / 2).float())
