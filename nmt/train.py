"""Training: a ``Trainer`` whose step, validation, checkpoint and stopping rule
are separate pieces, and ``train()``, the loop that runs them.

Resuming from ``checkpoints/last.pt`` restores the model, the optimizer, the
step, the learning-rate state, the RNG state and the position in the data
(epoch and batch), so a resumed run computes exactly what an uninterrupted
one would have.

A step never waits for the device: batches are padded on the host (their
token counts are known there) and copied from pinned memory without
blocking; the loss stays on the device and reaches the host only when it is
logged. On a GPU the host can therefore queue the next step's work while the
current one runs.

Launched by ``torchrun`` the same loop runs data-parallel (DDP; NCCL on GPUs,
gloo on CPUs). One step consumes ``world_size x train.accumulate``
consecutive batches of the epoch's list: rank r trains on batches r, r + W,
... of them, and the loss is normalised by the tokens of all of them, so the
update equals a single process's with ``train.accumulate = W x accumulate``.
Only rank 0 validates and writes checkpoints, logs and reports.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import sacrebleu
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from nmt.average import step_checkpoints
from nmt.checkpoint import check_vocab, load_checkpoint, save_checkpoint, vocab_record
from nmt.config import Config, check_decode, save_config
from nmt.corpus import Corpus
from nmt.data import Batch, absolute_paths, check_inputs, make_batch
from nmt.device import check_fits, describe, fused_adam, pick_device, set_tf32, use_bf16
from nmt.errors import CheckpointError, ConfigError, NmtError
from nmt.io import write_text
from nmt.model import Seq2Seq
from nmt.translate import decode_corpus

log = logging.getLogger("nmt")
INTERRUPTED = "interrupted"


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0  # since the best BLEU (early stopping)
    lr_bad_validations: int = 0  # since the last improvement or decay (plateau schedule)
    lr_scale: float = 1.0  # product of the decays so far
    stopped_early: bool = False
    train_seconds: float = 0.0
    target_tokens: int = 0  # trained on so far (end markers included), all ranks together
    sentences: int = 0


def start_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def broadcast(value, world: int):
    """Rank 0's ``value`` on every rank (a no-op in a single process)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def setup_logging(path: Path) -> None:
    """Log lines go to the run's train.log and, through tqdm, to stderr."""
    class TqdmHandler(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record), file=sys.stderr)

    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_handler)
    log.addHandler(TqdmHandler())


def loss_sum(model: Seq2Seq, batch: Batch, label_smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over the batch's real target tokens (a device scalar)."""
    logits = model(batch.src, batch.src_lengths, batch.tgt_in, batch.positions)  # [N, V]
    targets = batch.tgt_out.view(-1).index_select(0, batch.positions)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="sum")


def _metric_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a kill


def _wait_for_a_new_second(folder: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second
    it was made in: a file made in the same second as the previous one (a quick resume) could
    sort before it, and its points would be taken for older ones and dropped."""
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NmtError(f"training diverged: the loss is {loss} at step {step}; lower train.lr or raise "
                       "train.warmup_steps; checkpoints/last.pt holds the model saved before it")


@torch.no_grad()
def validate(model: Seq2Seq, corpus: Corpus, cfg: Config, device: torch.device) -> dict:
    """Validation loss (per token, no smoothing) and greedy BLEU on the dev set."""
    model.eval()
    total, tokens = 0.0, 0
    order = sorted(range(len(corpus.valid_src)), key=lambda i: len(corpus.valid_src[i]))
    for start in range(0, len(order), cfg.decode.batch_size):
        idx = order[start:start + cfg.decode.batch_size]
        batch = make_batch([corpus.valid_src[i] for i in idx], [corpus.valid_tgt[i] for i in idx])
        total += loss_sum(model, batch.to(device), 0.0).item()
        tokens += batch.n_tokens
    greedy = replace(cfg.decode, beam_size=1, n_best=1, samples=0, min_length=0, no_repeat_ngram_size=0)
    hyps = decode_corpus(model, corpus.valid_src, greedy, device, never=corpus.tgt_vocab.control_ids)
    text = corpus.tgt_vocab.decode([h[0].tokens for h in hyps])
    bleu = sacrebleu.corpus_bleu(text, [corpus.valid_ref]).score
    model.train()
    return {"loss": total / tokens, "ppl": math.exp(min(total / tokens, 50)), "bleu": bleu}


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train a model in ``run_dir``; return a summary (best step, BLEU, wall time)."""
    trainer = Trainer(cfg, Path(run_dir), resume)
    with trainer.ctrl_c_stops_between_steps():
        while (reason := trainer.stop_reason()) is None:
            trainer.step(trainer.next_step_batches())
            if trainer.state.step % cfg.train.log_every == 0:
                trainer.log_progress()
            if trainer.state.step % cfg.train.valid_every == 0 and trainer.corpus.valid_src:
                trainer.validate()
            elif trainer.checkpoint_due():
                trainer.save([trainer.last_path])
    return trainer.finish(reason)


class Trainer:
    """One run: model, optimizer, data and state, and the pieces of the loop."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        # The run's config.yaml names its files by absolute paths: --resume works from anywhere.
        cfg = replace(cfg, data=absolute_paths(cfg.data))
        self.cfg, self.run_dir, tc = cfg, run_dir, cfg.train
        self.last_path, self.best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
        if resume and not self.last_path.is_file():
            raise CheckpointError(f"{self.last_path}: no checkpoint to resume from")
        if not resume and self.last_path.exists():
            raise CheckpointError(f"{run_dir}: already holds a run; pass --resume to continue it "
                                  "or choose another run directory")
        check_inputs(cfg.data)  # a missing validation or test file, before the training data is read
        self.device = device = pick_device(tc.device)
        self.bf16 = use_bf16(tc.precision, device)  # refuses bf16 without hardware support, before any work
        set_tf32(device, tc.tf32)
        self.rank, self.world = start_distributed(device)
        self.main = self.rank == 0  # only rank 0 writes anything
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.main:
            setup_logging(run_dir / "train.log")
        log.disabled = not self.main
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed + self.rank)  # DDP copies rank 0's initial weights to all ranks
        ckpt = self._resume_checkpoint() if resume else None
        if self.main:
            save_config(cfg, run_dir / "config.yaml")
        self.corpus = Corpus(cfg, run_dir, reuse_vocab=resume, rank=self.rank, world=self.world)
        check_decode(cfg.decode, len(self.corpus.tgt_vocab))  # the final test's beam, before any work
        make_model = partial(Seq2Seq, cfg.model, len(self.corpus.src_vocab), len(self.corpus.tgt_vocab))
        check_fits(make_model, device)
        self.model = make_model().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, fused=fused_adam(device))
        self.state = TrainState()
        if ckpt is not None:
            self._restore(ckpt)
        self.ema = None  # train.ema: the moving average of the weights, a model of its own
        if tc.ema:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            if ckpt is not None and "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            elif ckpt is not None:
                log.warning("train.ema is new on this resume: the average starts from the current weights")
        self.n_params = sum(p.numel() for p in self.model.parameters())
        log.info(f"model: {self.n_params:,} parameters on {describe(device, self.bf16)}"
                 f"{f' x {self.world} processes' if self.world > 1 else ''}; run directory {run_dir}")
        self.trained = self.model
        if self.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.writer = None
        if self.main:
            self._forget_metrics_after(self.state.step)
            _wait_for_a_new_second(run_dir / "tensorboard")
            from torch.utils.tensorboard import SummaryWriter  # imported late: slow to import
            # purge_step: TensorBoard drops the points of steps a resumed run trains again.
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=self.state.step + 1)
        self.per_step = self.world * tc.accumulate  # batches of the epoch's list consumed by one step
        self.epoch_list: tuple[int, list[np.ndarray]] | None = None
        self.interrupted = False
        self.progress = tqdm(total=tc.max_steps, initial=self.state.step, desc="train", unit="step",
                             dynamic_ncols=True, mininterval=1.0, disable=None if self.main else True)
        self.segment_start = self.saved_at = time.perf_counter()
        self._reset_window()

    def _forget_metrics_after(self, step: int) -> None:
        """metrics.jsonl keeps the points up to the checkpoint's step: those after it are
        trained (and logged) again, and each step must appear once."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if (at := _metric_step(line)) is not None and at <= step]
        if len(kept) != len(lines):
            write_text(path, "".join(kept))

    def _resume_checkpoint(self) -> dict:
        """last.pt, after checking that nothing that shapes the run has changed."""
        ckpt = load_checkpoint(self.last_path, self.device)
        # These shape the model, the vocabulary and the epoch's batch list. (The vocabulary is
        # the run's own on a resume: the sample it was trained on no longer matters.)
        loose = ("valid", "test", "cache_dir", "spm_sample_sentences")
        fixed = [("data", k) for k in ckpt["config"]["data"] if k not in loose] + \
                [("model", k) for k in ckpt["config"]["model"]] + \
                [("train", k) for k in ("seed", "batch_size", "batch_unit")]
        for section, key in fixed:
            value, now = ckpt["config"][section][key], getattr(getattr(self.cfg, section), key)
            if key in ("train", "loader") and isinstance(value, str) and os.path.abspath(value) == now:
                continue  # a run from before paths were recorded as absolute
            if now != value:
                raise CheckpointError(f"{self.last_path}: {section}.{key} was {value!r} in this run; "
                                      "it cannot change on --resume")
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        check_vocab(ckpt, "src", self.corpus.src_vocab, self.last_path)
        check_vocab(ckpt, "tgt", self.corpus.tgt_vocab, self.last_path)
        if ckpt.get("corpus", self.corpus.fingerprint) != self.corpus.fingerprint:
            log.warning(f"the training data changed since {self.last_path} was written (now "
                        f"{self.corpus.folder}): the run will not match an uninterrupted one")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["train_state"])
        tc = self.cfg.train
        self.state.stopped_early = bool(tc.patience) and self.state.bad_validations >= tc.patience
        rng = ckpt["rng"]
        if self.rank < len(rng["cpu"]):  # the same world size: each rank continues its own stream
            torch.set_rng_state(rng["cpu"][self.rank])
            if self.device.type == "cuda" and rng["cuda"][self.rank] is not None:
                torch.cuda.set_rng_state(rng["cuda"][self.rank], self.device)
        log.info(f"resumed from {self.last_path} at step {self.state.step} (epoch {self.state.epoch}, "
                 f"batch {self.state.batch_in_epoch})")
        if ckpt.get("bf16", self.bf16) != self.bf16:  # e.g. precision auto on a CPU without bf16
            log.warning(f"the run trained {'in bf16' if ckpt['bf16'] else 'in fp32'} and goes on "
                        f"{'in bf16' if self.bf16 else 'in fp32'}: it will not match an uninterrupted run")

    # -- the data --------------------------------------------------------------------------

    def _epoch_batches(self) -> list[np.ndarray]:
        """This epoch's batch list (cached), cut to whole steps."""
        tc, epoch = self.cfg.train, self.state.epoch
        if self.epoch_list is None or self.epoch_list[0] != epoch:
            batches = self.corpus.epoch(tc.batch_size, tc.batch_unit, tc.seed, epoch)
            if len(batches) < self.per_step:
                raise ConfigError(f"train.accumulate: a step needs {self.per_step} batches "
                                  f"(processes x accumulate) but an epoch has {len(batches)}")
            self.epoch_list = (epoch, batches[:len(batches) - len(batches) % self.per_step])
        return self.epoch_list[1]

    def _epoch_done(self) -> bool:
        return self.state.batch_in_epoch >= len(self._epoch_batches())

    def next_step_batches(self) -> list[np.ndarray]:
        """The next ``world x accumulate`` batches of the epoch's list, moving to the next
        epoch when this one is used up (an incomplete last step is skipped)."""
        if self._epoch_done():
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        first = self.state.batch_in_epoch
        self.state.batch_in_epoch += self.per_step
        return self._epoch_batches()[first:first + self.per_step]

    # -- the step --------------------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        tc = self.cfg.train
        warmup = min(1.0, step / tc.warmup_steps) if tc.warmup_steps else 1.0
        return max(tc.lr * self.state.lr_scale, tc.min_lr) * warmup

    def step(self, group: list[np.ndarray]) -> None:
        """One optimizer update on ``group`` (this rank trains on its share of it)."""
        tc, state = self.cfg.train, self.state
        step_tokens = self.corpus.target_tokens(group)
        lr = self.learning_rate(state.step + 1)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        mine = group[self.rank::self.world]
        for k, idx in enumerate(mine):
            batch = self.corpus.batch(idx).to(self.device)
            # DDP averages gradients over ranks: scale so the sum is per token of the step.
            sync = k == len(mine) - 1 or self.world == 1
            with nullcontext() if sync else self.trained.no_sync():
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                    loss = loss_sum(self.trained, batch, tc.label_smoothing)
                (loss * (self.world / step_tokens)).backward()
            self.window_loss += loss.detach().float()
            self.window_my_tokens += batch.n_tokens
        if tc.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self._update_ema()
        state.step += 1
        state.target_tokens += step_tokens
        state.sentences += sum(len(idx) for idx in group)
        self.window_tokens += step_tokens
        self.progress.update(1)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """average += (1 - decay) * (weights - average), with a decay that starts low (the
        first steps' weights are soon forgotten) and grows to train.ema: min(ema, (1 + t) /
        (10 + t)) after t steps. The step count is the host's: no device value is read."""
        t = self.state.step
        weight = 1.0 - min(self.cfg.train.ema, (1 + t) / (10 + t))
        for average, param in zip(self.ema.parameters(), self.model.parameters()):
            average.lerp_(param, weight)

    def _reset_window(self) -> None:
        self.window_loss = torch.zeros((), device=self.device)
        self.window_my_tokens, self.window_tokens, self.window_start = 0, 0, time.perf_counter()

    def log_progress(self) -> None:
        """Training loss per token since the last log line (this rank's batches), learning
        rate and speed. The one place a training value is read back from the device."""
        step = self.state.step
        value = self.window_loss.item() / max(self.window_my_tokens, 1)
        _check_finite(value, step)
        speed = self.window_tokens / max(time.perf_counter() - self.window_start, 1e-9)
        lr = self.learning_rate(step)
        self.progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}", tok_s=f"{speed:.0f}")
        self.record(train_loss=value, train_lr=lr, train_target_tokens_per_s=speed)
        log.info(f"step {step} epoch {self.state.epoch}: loss {value:.3f} lr {lr:.2e} "
                 f"{speed:.0f} target tokens/s")
        self._reset_window()

    # -- validation, checkpoints, stopping -------------------------------------------------

    def record(self, **values) -> None:
        """The curves, to TensorBoard and to metrics.jsonl (which the evaluation report plots)."""
        if not self.main:
            return
        for key, value in values.items():
            self.writer.add_scalar(key.replace("_", "/", 1), value, self.state.step)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.state.step, **values}) + "\n")

    def validate(self) -> None:
        """Validate (rank 0), update the learning-rate schedule and early stopping, checkpoint."""
        tc, state = self.cfg.train, self.state
        model = self.model if self.ema is None else self.ema
        result = broadcast(validate(model, self.corpus, self.cfg, self.device) if self.main else None,
                           self.world)
        _check_finite(result["loss"], state.step)  # before it could be saved
        self.record(**{f"valid_{key}": value for key, value in result.items()})
        improved = result["bleu"] > state.best_bleu
        if improved:
            state.best_bleu, state.best_step = result["bleu"], state.step
            state.bad_validations = state.lr_bad_validations = 0
        else:
            state.bad_validations += 1
            state.lr_bad_validations += 1
            if state.lr_bad_validations >= tc.lr_patience:
                state.lr_scale *= tc.lr_decay
                state.lr_bad_validations = 0
        state.stopped_early = bool(tc.patience) and state.bad_validations >= tc.patience
        log.info(f"step {state.step}: valid loss {result['loss']:.3f} ppl {result['ppl']:.2f} "
                 f"BLEU {result['bleu']:.2f}{' (best)' if improved else ''}; "
                 f"lr {self.learning_rate(state.step + 1):.2e}")
        paths = [self.last_path, self.best_path] if improved else [self.last_path]
        if tc.keep_checkpoints:  # for averaging (nmt.average)
            paths.append(self.run_dir / "checkpoints" / f"step-{state.step}.pt")
        self.save(paths, valid_bleu=result["bleu"])
        if tc.keep_checkpoints and self.main:
            for old in step_checkpoints(self.run_dir)[:-tc.keep_checkpoints]:
                old.unlink()
        self._reset_window()  # validation time is not training speed

    def save(self, paths: list[Path], valid_bleu: float | None = None) -> None:
        """Every rank calls this (to share its RNG state); rank 0 writes ``paths``."""
        device = self.device
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        states = [rng]
        if self.world > 1:
            states = [None] * self.world
            dist.all_gather_object(states, rng)
        _check_finite(self.window_loss.item(), self.state.step)  # never save a diverged model
        self.saved_at = time.perf_counter()
        if not self.main:
            return
        train_state = asdict(self.state)
        train_state["train_seconds"] += self.saved_at - self.segment_start
        payload = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "train_state": train_state, "config": self.cfg.to_dict(), "bf16": self.bf16,
            "rng": {"cpu": [s[0] for s in states], "cuda": [s[1] for s in states]},
            "vocab": {"src": vocab_record(self.corpus.src_vocab), "tgt": vocab_record(self.corpus.tgt_vocab)},
            "valid_bleu": valid_bleu, "corpus": self.corpus.fingerprint}
        if self.ema is not None:
            payload["ema"] = self.ema.state_dict()
        for path in paths:
            save_checkpoint(path, payload)

    def checkpoint_due(self) -> bool:
        """Whether train.checkpoint_every_minutes have passed since the last checkpoint (rank
        0's clock decides for all). Saving reads the state and changes nothing: a run
        checkpointed more often computes exactly the same."""
        minutes = self.cfg.train.checkpoint_every_minutes
        return bool(minutes) and broadcast(time.perf_counter() - self.saved_at >= 60 * minutes, self.world)

    def stop_reason(self) -> str | None:
        """Why training stops before the next step, or None to go on. The only stopping rule."""
        tc, state = self.cfg.train, self.state
        if self.interrupted:
            return INTERRUPTED
        if state.stopped_early:
            return f"early stop: no better BLEU in {tc.patience} validations"
        if state.step >= tc.max_steps:
            return f"train.max_steps ({tc.max_steps}) reached"
        if tc.max_epochs and state.epoch + self._epoch_done() >= tc.max_epochs:
            return f"train.max_epochs ({tc.max_epochs}) reached"
        if tc.max_minutes and broadcast(time.perf_counter() - self.segment_start >= 60 * tc.max_minutes,
                                        self.world):
            return f"time budget of {tc.max_minutes} minutes reached"
        return None

    @contextmanager
    def ctrl_c_stops_between_steps(self):
        """Ctrl-C only raises a flag: the loop stops between steps, where the state (model,
        optimizer, RNG, data position) is consistent and can be resumed exactly."""
        def on_interrupt(signum, frame):
            if self.interrupted or self.world > 1:
                raise KeyboardInterrupt
            self.interrupted = True
            log.info("interrupted: stopping after this step (press Ctrl-C again to stop at once)")

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            yield
        finally:
            self.progress.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def finish(self, reason: str) -> dict:
        """Write the final checkpoint (no extra validation: it would change the schedule's
        state, and a run resumed from it would no longer match an uninterrupted one)."""
        state, now = self.state, time.perf_counter()
        state.train_seconds += now - self.segment_start
        self.segment_start = now
        if reason == INTERRUPTED:
            self.save([self.last_path])
            log.info(f"interrupted at step {state.step}; saved {self.last_path}: --resume continues here")
            raise KeyboardInterrupt
        log.info(reason)
        self.save([self.last_path] if self.best_path.exists() else [self.last_path, self.best_path])
        if self.writer:
            self.writer.close()
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return {"run_dir": str(self.run_dir), "steps": state.step, "best_step": state.best_step,
                "best_valid_bleu": round(state.best_bleu, 2), "stopped_early": state.stopped_early,
                "train_seconds": round(state.train_seconds, 1), "parameters": self.n_params,
                "target_tokens": state.target_tokens, "sentences": state.sentences,
                "filter": self.corpus.filter_counts, "rank": self.rank}
