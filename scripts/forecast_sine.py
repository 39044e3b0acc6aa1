"""The textbook's application (docs/model.md §7): forecasting sin(x) with nmt's recurrent encoder.

sin(x) is sampled every ``interval`` over [0, max_x]; an example is a window of ``window``
values, its target the next value. The model is ``nmt.encoder.Encoder`` read to the end of the
window and a linear layer on its last state. Training uses the first ``train_fraction`` of the
curve; the unseen rest is the test: one step ahead (windows of true values) and free running
(each prediction fed back as the next input, as the translation decoder does).

    python scripts/forecast_sine.py --config configs/sine.yaml --out runs/sine
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nmt.cli import run_command  # noqa: E402
from nmt.config import Range, fill, read_yaml  # noqa: E402
from nmt.encoder import Encoder  # noqa: E402
from nmt.io import write_bytes, write_text  # noqa: E402


@dataclass
class SineConfig:
    max_x: float = 100.0  # sample sin(x) over [0, max_x] ...
    interval: float = 0.1  # ... every `interval`
    window: int = 20  # previous values the model reads
    train_fraction: float = 0.8  # the first part trains; the later, unseen stretch tests
    cell: str = "lstm"  # lstm, gru or rnn
    layers: int = 2
    hidden_size: int = 32
    dropout: float = 0.1  # between stacked layers, never across time
    steps: int = 2000
    batch_size: int = 64
    lr: float = 0.005
    seed: int = 1
    threads: int = 2
    free_run_steps: int = 100  # length of the free-running forecast


class SineForecaster(nn.Module):
    def __init__(self, cfg: SineConfig):
        super().__init__()
        self.encoder = Encoder(cfg.cell, 1, cfg.hidden_size, cfg.layers, bidirectional=False,
                               dropout=cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows: [B, k] -> next values [B]."""
        lengths = torch.full((windows.size(0),), windows.size(1), dtype=torch.long)
        _, finals = self.encoder(windows.unsqueeze(-1), lengths)
        return self.head(finals[-1][0]).squeeze(-1)  # top layer's state after the last value


def sine_data(cfg: SineConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(x, sin x, index where the test stretch starts)."""
    x = np.arange(0.0, cfg.max_x + cfg.interval / 2, cfg.interval)
    return x, np.sin(x).astype(np.float32), int(len(x) * cfg.train_fraction)


def windows_of(y: np.ndarray, start: int, stop: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window y[i-k:i] with its target y[i], for start <= i < stop."""
    index = np.arange(max(start, k), stop)
    inputs = np.stack([y[i - k:i] for i in index])
    return torch.from_numpy(inputs), torch.from_numpy(y[index])


def free_run(model: SineForecaster, history: np.ndarray, steps: int) -> np.ndarray:
    """Forecast ``steps`` values, each prediction fed back as an input."""
    window = list(history)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            value = model(torch.tensor([window], dtype=torch.float32)).item()
            out.append(value)
            window = window[1:] + [value]
    return np.array(out, dtype=np.float32)


SINE_RANGES = {  # each number's range
    "max_x": Range(0.0, 1e6, open_low=True), "interval": Range(0.0, 1e3, open_low=True),
    "window": Range(1, 10_000), "train_fraction": Range(0.0, 0.99, open_low=True),
    "layers": Range(1, 64), "hidden_size": Range(1, 16384), "dropout": Range(0.0, 0.99),
    "steps": Range(1, 10**9), "batch_size": Range(1, 10**6),
    "lr": Range(0.0, 100.0, open_low=True), "seed": Range(0, 2**32 - 1),
    "threads": Range(0, 1024), "free_run_steps": Range(1, 10**6),
}


def check(cfg: SineConfig) -> SineConfig:
    from nmt.errors import ConfigError
    if cfg.cell not in ("lstm", "gru", "rnn"):
        raise ConfigError(f"cell: {cfg.cell!r} is not one of lstm, gru, rnn")
    for key, bounds in SINE_RANGES.items():
        bounds.check(key, getattr(cfg, key))
    points = int(cfg.max_x / cfg.interval) + 1
    if points > 10**7:
        raise ConfigError(f"interval: max_x / interval gives {points:,} points, "
                          "more than 10,000,000")
    if points * min(cfg.train_fraction, 1 - cfg.train_fraction) <= cfg.window:
        raise ConfigError(f"window: {cfg.window} values do not fit in the train or test stretch "
                          f"({points} points in all); raise max_x or lower window")
    return cfg


def run_forecast(cfg: SineConfig, out_dir: str | Path | None = None) -> dict:
    """Train, evaluate on the unseen stretch, and (with ``out_dir``) write forecast.png and
    forecast.json."""
    check(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    x, y, split = sine_data(cfg)
    train_in, train_out = windows_of(y, 0, split, cfg.window)
    test_in, test_out = windows_of(y, split, len(y), cfg.window)
    model = SineForecaster(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        batch = torch.randint(len(train_in), (cfg.batch_size,), generator=generator)
        loss = nn.functional.mse_loss(model(train_in[batch]), train_out[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        one_step = model(test_in).numpy()
    steps = min(cfg.free_run_steps, len(y) - split)
    free = free_run(model, y[split - cfg.window:split], steps)
    last_value = test_in[:, -1].numpy()  # the "repeat the last value" baseline
    result = {
        "config": asdict(cfg),
        "train_seconds": round(seconds, 2),
        "test_points": len(test_out),
        "one_step_mse": float(np.mean((one_step - test_out.numpy()) ** 2)),
        "free_run_mse": float(np.mean((free - y[split:split + steps]) ** 2)),
        "free_run_steps": steps,
        "repeat_last_value_mse": float(np.mean((last_value - test_out.numpy()) ** 2)),
    }
    if out_dir is not None:
        out = Path(out_dir)
        test_x = x[split:]
        png = plot_forecast(x, y, split, test_x[len(test_x) - len(one_step):], one_step,
                            test_x[:steps], free, result)
        write_bytes(out / "forecast.png", png)
        write_text(out / "forecast.json", json.dumps(result, indent=2) + "\n")
    return result


def plot_forecast(x, y, split, one_x, one_step, free_x, free, result) -> bytes:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(10, 3.8))
    axis.plot(x, y, color="black", linewidth=1, label="sin(x)")
    axis.axvline(x[split], color="gray", linestyle=":", label="train | test")
    axis.plot(one_x, one_step, color="tab:blue", linestyle="--",
              label=f"one step ahead (MSE {result['one_step_mse']:.2e})")
    axis.plot(free_x, free, color="tab:red",
              label=f"free running (MSE {result['free_run_mse']:.2e})")
    axis.set_xlim(x[split] - 15 * math.pi / 4, x[-1])
    axis.set_xlabel("x")
    axis.legend(loc="lower left", fontsize=8)
    axis.set_title(f"{result['config']['layers']}-layer {result['config']['cell'].upper()} "
                   "forecasting sin(x)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="forecast_sine", description="Forecast sin(x) with the "
                                "package's recurrent encoder; print test MSEs, write a plot and "
                                "JSON.")
    p.add_argument("--config", default=None, help="YAML config (default: the built-in settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set cell=gru --set layers=3 (repeatable)")
    p.add_argument("--out", default="runs/sine", help="folder for forecast.png and forecast.json")

    def forecast(args):
        values = read_yaml(args.config) if args.config else {}
        cfg = fill(SineConfig(), values, args.set, f"{args.config}: " if args.config else "")
        result = run_forecast(cfg, args.out)
        print(f"trained {cfg.steps} steps in {result['train_seconds']:.1f} s "
              f"({cfg.layers}-layer {cfg.cell}, hidden {cfg.hidden_size}, window {cfg.window})")
        print(f"test MSE, one step ahead: {result['one_step_mse']:.3e} "
              f"(repeat-last-value baseline {result['repeat_last_value_mse']:.3e})")
        print(f"test MSE, free running {result['free_run_steps']} steps: "
              f"{result['free_run_mse']:.3e}")
        print(f"plot: {args.out}/forecast.png, numbers: {args.out}/forecast.json")
        return 0

    return run_command("forecast_sine", forecast, p, argv)


if __name__ == "__main__":
    sys.exit(main())
