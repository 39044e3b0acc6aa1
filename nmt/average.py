"""Checkpoint averaging: the element-wise mean of several checkpoints' weights, one model.

Late training's weights wander around a good point and their mean sits nearer it, so the mean of
the last (or best) few checkpoints that ``train.keep_checkpoints`` kept usually beats each. They
must be of one model; the result is for decoding only (``--checkpoint averaged``).
"""
from __future__ import annotations

from pathlib import Path

from nmt.checkpoint import Checkpoint
from nmt.rundir import RunDir
from nmt.errors import CheckpointError


def choose(run_dir: Path, last: int = 0, best: int = 0) -> list[Path]:
    """The ``last`` most recent, or the ``best`` highest-BLEU, of the kept checkpoints."""
    kept = RunDir(run_dir).step_checkpoints()
    want = last or best
    if len(kept) < want:
        raise CheckpointError(f"{run_dir}/checkpoints: {len(kept)} kept checkpoints "
                              f"(step-*.pt), {want} wanted; train with train.keep_checkpoints "
                              "of at least that")
    if last:
        return kept[-last:]
    bleus = [Checkpoint.load(p, mmap=True).valid_bleu for p in kept]  # no weights read
    scored = [(float("-inf") if bleu is None else bleu, -i, p)
              for i, (bleu, p) in enumerate(zip(bleus, kept))]
    return [p for _, _, p in sorted(scored, reverse=True)[:best]]


def average(paths: list[Path]) -> Checkpoint:
    """A decoding checkpoint whose weights are the mean of ``paths``' weights (in float64)."""
    ckpts = [Checkpoint.load(p) for p in paths]
    first = ckpts[0]
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if not ckpt.same_model(first):
            raise CheckpointError(f"{path}: another model or vocabulary than {paths[0]}; only "
                                  "checkpoints of one model can be averaged")
    with_ema = [p for p, c in zip(paths, ckpts) if c.ema is not None]
    if with_ema and len(with_ema) < len(ckpts):  # train.ema switched on at a resume
        without = next(p for p, c in zip(paths, ckpts) if c.ema is None)
        raise CheckpointError(f"{with_ema[0]} holds a moving average of the weights "
                              f"(train.ema) but {without} does not; average checkpoints of one "
                              "kind")
    weights = [c.decoding_weights() for c in ckpts]  # the moving averages of runs with train.ema
    mean = lambda key: sum(w[key].double() for w in weights) / len(weights)  # noqa: E731
    model = {key: mean(key).to(value.dtype) if value.is_floating_point() else value
             for key, value in weights[0].items()}
    newest = max(ckpts, key=lambda c: c.progress.step)
    return Checkpoint(model=model, config=first.config, vocab=first.vocab, progress=newest.progress,
                      schedule=newest.schedule, averaged_from=[str(p) for p in paths])
