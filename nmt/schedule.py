"""The training schedule: linear warm-up, learning-rate decay when validation BLEU stalls,
and early stopping. Pure: it reads the validations it is given and holds its own state,
which the checkpoint saves (in its ``train_state``) so that a resumed run goes on exactly."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from nmt.config import TrainConfig


@dataclass
class ScheduleState:
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0  # since the best BLEU (early stopping)
    lr_bad_validations: int = 0  # since the last improvement or decay (plateau schedule)
    lr_scale: float = 1.0  # product of the decays so far
    stopped_early: bool = False  # derived from bad_validations; saved for the record

    @classmethod
    def from_record(cls, record: dict) -> "ScheduleState":
        """The fields of ``record`` (a checkpoint's train_state) that are the schedule's;
        an older checkpoint's missing ones take their defaults."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


@dataclass
class Schedule:
    settings: TrainConfig
    state: ScheduleState = field(default_factory=ScheduleState)

    def __post_init__(self) -> None:
        # patience may differ on a resume: whether the run has stopped follows the settings now
        self.state.stopped_early = self._patience_spent()

    def _patience_spent(self) -> bool:
        return bool(self.settings.patience) and self.state.bad_validations >= self.settings.patience

    def learning_rate(self, step: int) -> float:
        """The rate of update ``step`` (counted from 1): warm-up times the decayed rate."""
        settings = self.settings
        warmup = min(1.0, step / settings.warmup_steps) if settings.warmup_steps else 1.0
        return max(settings.lr * self.state.lr_scale, settings.min_lr) * warmup

    def validated(self, bleu: float, step: int) -> bool:
        """Take a validation's BLEU at ``step``; whether it is the best so far."""
        state = self.state
        improved = bleu > state.best_bleu
        if improved:
            state.best_bleu = bleu
            state.best_step = step
            state.bad_validations = 0
            state.lr_bad_validations = 0
        else:
            state.bad_validations += 1
            state.lr_bad_validations += 1
            if state.lr_bad_validations >= self.settings.lr_patience:
                state.lr_scale *= self.settings.lr_decay
                state.lr_bad_validations = 0
        state.stopped_early = self._patience_spent()
        return improved
