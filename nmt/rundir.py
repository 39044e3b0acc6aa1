"""A run directory's paths, metrics file and facts (no torch: reports and tools read them cheaply).
Beside ``RunDir``'s paths it holds the sentencepiece model(s) (``nmt.vocab.vocab_paths``)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from nmt.errors import CheckpointError
from nmt.io import write_text

STEP_FILE = re.compile(r"step-(\d+)\.pt")


class RunDir:
    """The paths of a run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"  # the resolved config
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoint("last")  # written at validations, by time and at the end
        self.best = self.checkpoint("best")  # the best validation BLEU's
        self.averaged = self.checkpoint("averaged")  # nmt-average's
        self.train_log = self.root / "train.log"
        self.metrics = MetricsFile(self.root / "metrics.jsonl")
        self.facts = RunFacts(self.root / "run.json")
        self.tensorboard = self.root / "tensorboard"
        self.cache = self.root / "cache"  # the prepared data, unless data.cache_dir
        self.reports = self.root / "reports"  # nmt-evaluate's

    def checkpoint(self, name: str) -> Path:
        """``name``: "best", "last", "averaged" or "step-N"."""
        return self.checkpoints / f"{name}.pt"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoint(f"step-{step}")

    def step_checkpoints(self) -> list[Path]:
        """The run's kept validation checkpoints (train.keep_checkpoints), oldest first."""
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob("step-*.pt")
                 if (m := STEP_FILE.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def drop_step_checkpoints_before_the_last(self, keep: int) -> None:
        for old in self.step_checkpoints()[:-keep]:
            old.unlink()

    @classmethod
    def of_checkpoint(cls, path: Path) -> RunDir | None:
        """The run directory a checkpoint file lies in, or None (a file elsewhere)."""
        return cls(path.parent.parent) if path.parent.name == "checkpoints" else None


class Metric:
    """Curve names: metrics.jsonl keys; TensorBoard tags with the first _ as / (train/loss)."""
    TRAIN_LOSS = "train_loss"
    TRAIN_LR = "train_lr"
    TRAIN_SPEED = "train_target_tokens_per_s"
    VALID_LOSS = "valid_loss"
    VALID_PPL = "valid_ppl"
    VALID_BLEU = "valid_bleu"

    @staticmethod
    def tag(name: str) -> str:
        return name.replace("_", "/", 1)


@dataclass(frozen=True)
class MetricsFile:
    """metrics.jsonl: one JSON object per log line or validation, its step and its values."""
    path: Path
    STEP: ClassVar[str] = "step"

    def append(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({self.STEP: step, **values}) + "\n")

    def _rows(self) -> list[tuple[str, dict | None]]:
        """(line, its object or None for a line cut short by a kill)."""
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                row = json.loads(line)
                int(row[self.STEP])
            except (ValueError, KeyError, TypeError):
                row = None
            rows.append((line, row))
        return rows

    def forget_after(self, step: int) -> None:
        """Keep the points up to ``step`` (a resume's checkpoint): each step appears once."""
        if not self.path.exists():
            return
        rows = self._rows()
        kept = [line for line, row in rows if row is not None and int(row[self.STEP]) <= step]
        if len(kept) != len(rows):
            write_text(self.path, "".join(kept))

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Each metric's (step, value) points in step order; a resumed run's point overwrites."""
        if not self.path.is_file():
            return {}
        curves: dict[str, dict[int, float]] = {}
        for _, row in self._rows():
            for name, value in (row or {}).items():
                if name != self.STEP:
                    curves.setdefault(name, {})[row[self.STEP]] = value
        return {name: sorted(points.items()) for name, points in curves.items()}


@dataclass(frozen=True)
class RunFacts:
    """run.json: what export and reports say about a run, so that no log is scraped. Training
    writes ``TRAINING`` and ``stopped`` (why) at each checkpoint; nmt-evaluate appends each
    report folder to ``reports``, with ``set``, ``checkpoint``, ``step``, ``beam_size``,
    ``int8`` and ``ensemble`` (the members added)."""
    path: Path
    TRAINING: ClassVar[tuple[str, ...]] = ("hardware", "torch", "steps", "train_minutes")

    def read(self) -> dict:
        """The facts; {} without run.json, or with one that is not a JSON object."""
        try:
            facts = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return facts if isinstance(facts, dict) else {}

    def update(self, **facts) -> None:
        # Read again just before writing: nmt-evaluate may add a report while training runs.
        write_text(self.path, json.dumps({**self.read(), **facts}, indent=1) + "\n")

    def training(self) -> dict:
        """The facts training wrote (``TRAINING``), those there are."""
        facts = self.read()
        return {name: facts[name] for name in self.TRAINING if name in facts}

    def add_report(self, folder: Path, **facts) -> None:
        """Record the report in ``folder`` (replacing an earlier record of the same folder)."""
        root = self.path.parent.resolve()
        folder = Path(folder).resolve()
        name = str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)
        reports = [r for r in self.read().get("reports", []) if r.get("folder") != name]
        self.update(reports=reports + [{"folder": name, **facts}])

    def reports(self) -> list[tuple[Path, dict]]:
        """(report folder, its record), oldest first."""
        return [(self.path.parent / r["folder"], r) for r in self.read().get("reports", [])
                if isinstance(r, dict) and "folder" in r]


def resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """A checkpoint name ("best", "step-500") or a path (with "/" or .pt) -> existing file."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    is_path = "/" in checkpoint or checkpoint.endswith(".pt")
    path = Path(checkpoint) if is_path else RunDir(run_dir).checkpoint(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path
