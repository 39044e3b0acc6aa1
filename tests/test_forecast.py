"""The textbook's sine-wave application, with the package's own recurrent encoder (docs/model.md §7)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nmt.encoder import Encoder
from forecast_sine import (SineConfig, SineForecaster, main as forecast_main, run_forecast, sine_data,
                           windows_of)

ROOT = Path(__file__).resolve().parent.parent


def test_trained_forecaster_beats_the_baselines():
    cfg = SineConfig(steps=300)
    x = np.arange(0.0, cfg.max_x + cfg.interval / 2, cfg.interval)
    y = np.sin(x)
    split = int(len(x) * cfg.train_fraction)
    targets = y[max(split, cfg.window):]
    repeat_last = float(np.mean((y[max(split, cfg.window) - 1:-1] - targets) ** 2))
    torch.manual_seed(cfg.seed)
    untrained = SineForecaster(cfg).eval()
    _, y32, _ = sine_data(cfg)
    test_in, test_out = windows_of(y32, split, len(y32), cfg.window)
    with torch.no_grad():
        untrained_mse = float(torch.mean((untrained(test_in) - test_out) ** 2))
    result = run_forecast(cfg)
    bound = 0.2 * min(repeat_last, untrained_mse)
    assert result["one_step_mse"] < bound, (result, repeat_last, untrained_mse)
    assert result["repeat_last_value_mse"] == np.float32(repeat_last) or \
        abs(result["repeat_last_value_mse"] - repeat_last) < 1e-6
    assert result["free_run_mse"] < 0.1  # fed its own predictions, it still follows the wave
    assert result["test_points"] == len(targets)


def test_it_is_the_package_encoder_deep_with_dropout_between_layers():
    model = SineForecaster(SineConfig(cell="gru", layers=3, dropout=0.2))
    assert isinstance(model.encoder, Encoder) and len(model.encoder.layers) == 3
    assert model.encoder.dropout.p == 0.2 and model.encoder.layers[0].mode == "GRU"


def test_script_writes_a_plot_and_numbers(tmp_path):
    """The script as a process, as a user runs it."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "forecast_sine.py"), "--config",
                             str(ROOT / "configs" / "sine.yaml"), "--set", "steps=50", "--set", "cell=rnn",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "test MSE, one step ahead" in result.stdout and "free running" in result.stdout
    numbers = json.loads((tmp_path / "forecast.json").read_text())
    assert numbers["config"]["cell"] == "rnn" and numbers["config"]["steps"] == 50
    with Image.open(tmp_path / "forecast.png") as img:
        img.verify()


def test_a_bad_setting_is_refused_in_one_line(capsys):
    assert forecast_main(["--set", "cell=cnn"]) == 2  # the process's exit code (the script exits with it)
    assert capsys.readouterr().err.strip() == "forecast_sine: error: cell: 'cnn' is not one of lstm, gru, rnn"
