"""Training: ``train()``, the loop, read top to bottom; ``Trainer``, its steps and checkpoints.

A resume from ``checkpoints/last.pt`` restores the model, optimizer, step, schedule, RNG
state and position in the data, so it computes exactly what an uninterrupted run would
(``nmt.checkpoint``). A step never waits for the device: batches are padded on the host and
copied from pinned memory without blocking; the loss reaches the host only when logged.

Under ``torchrun`` the loop runs data-parallel (DDP). One step consumes ``world_size x
train.accumulate`` consecutive batches of the epoch's list, rank r batches r, r + W, ..., the
loss normalised by the tokens of all of them: the update equals one process's with
``train.accumulate = W x accumulate``. Only rank 0 validates and writes checkpoints, logs and
reports. The methods named ``all_ranks_...`` are collective (``nmt.collectives``).
"""
from __future__ import annotations

import copy
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nmt import collectives
from nmt.checkpoint import TrainState, load_for_resume, restore_training, save_training
from nmt.collectives import broadcast_from_rank0, gather_from_all_ranks
from nmt.config import Config, TrainConfig, check_decode, save_config, validation_decode
from nmt.corpus import Corpus
from nmt.data import Batch, absolute_paths, batch_of, check_inputs, length_batches
from nmt.device import check_fits, describe, fused_adam, pick_device, set_tf32, use_bf16
from nmt.errors import CheckpointError, ConfigError, NmtError
from nmt.finetune import Source, load_source, take_vocabulary, take_weights
from nmt.model import Seq2Seq
from nmt.rundir import Metric, RunDir
from nmt.schedule import Schedule, ScheduleState
from nmt.translate import decode_corpus

log = logging.getLogger("nmt")
INTERRUPTED = "interrupted"  # the stop reason of a Ctrl-C


@dataclass(frozen=True)
class TrainSummary:
    """What ``train()`` returns."""
    run_dir: str
    steps: int
    best_step: int  # 0: no validation ran
    best_valid_bleu: float
    stopped_early: bool
    train_seconds: float
    parameters: int
    target_tokens: int  # end markers included, all ranks together
    sentences: int
    filter: dict  # the training pairs the length filter dropped and kept
    rank: int  # under torchrun only rank 0 reports
    interrupted: bool = False  # by Ctrl-C: last.pt holds the run, --resume continues it


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> TrainSummary:
    """Train a model in ``run_dir``; return a summary (best step, BLEU, wall time). Ctrl-C
    stops it after the current step: the summary then says ``interrupted``."""
    trainer = Trainer(cfg, Path(run_dir), resume)
    tc = trainer.cfg.train
    with ctrl_c_stops_between_steps(trainer.world) as interrupt, closing(trainer.progress):
        while (reason := trainer.all_ranks_agree_stop_reason(interrupt.is_set())) is None:
            trainer.step(trainer.next_step_batches())
            if trainer.state.step % tc.log_every == 0:
                trainer.log_progress()
            if trainer.state.step % tc.valid_every == 0 and trainer.corpus.valid_sets:
                trainer.validate()  # and checkpoints
            elif trainer.all_ranks_agree_checkpoint_due():  # changes nothing that is computed
                trainer.save([trainer.run.last])
    return trainer.finish(reason)


class Trainer:
    """One run: model, optimizer, data and state; the step, and the pieces of the loop."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        self.run = run = RunDir(run_dir)
        cfg, source = _open_run(cfg, run, resume)
        self.cfg = cfg
        self.device, self.bf16, self.rank, self.world = start_process(cfg.train, run)
        self.is_rank0 = self.rank == 0  # only rank 0 writes anything
        ckpt = load_for_resume(run.last, cfg, self.device) if resume else None
        if self.is_rank0:
            save_config(cfg, run.config)
        self.corpus = Corpus(cfg, run_dir, resume or source is not None, self.rank, self.world)
        check_decode(cfg.decode, len(self.corpus.tgt_vocab))  # the final test's, before any work
        self.model, self.optimizer, self.ema = build_model(cfg, self.corpus, self.device)
        if source is not None:
            take_weights(source, self.model, self.ema)
        self.state = ckpt.progress if ckpt is not None else TrainState()
        self.schedule = Schedule(cfg.train, ckpt.schedule if ckpt is not None else ScheduleState())
        if ckpt is not None:
            restore_training(ckpt, path=run.last, corpus=self.corpus, bf16=self.bf16,
                             model=self.model, optimizer=self.optimizer, ema=self.ema,
                             rank=self.rank, device=self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        hardware = _hardware(self.device, self.bf16, self.world)
        log.info(f"model: {self.n_params:,} parameters on {hardware}; run directory {run_dir}")
        self.ddp_model = for_all_ranks(self.model, self.world, self.device)  # what steps run
        self.curves = Curves(run, self.state.step, enabled=self.is_rank0)
        self.batches = EpochBatches(self.corpus, cfg.train, self.world * cfg.train.accumulate)
        self.progress = _progress_bar(cfg.train.max_steps, self.state.step, self.is_rank0)
        self.segment_start = self.saved_at = time.perf_counter()
        self.window = LossWindow(self.device)

    def next_step_batches(self) -> list[np.ndarray]:  # world x accumulate of them
        return self.batches.next_step(self.state)

    def step(self, group: list[np.ndarray]) -> None:
        """One optimizer update on ``group`` (this rank trains on its share of it)."""
        tc = self.cfg.train
        step_tokens = self.corpus.target_tokens(group)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.schedule.learning_rate(self.state.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        mine = group[self.rank::self.world]
        for k, idx in enumerate(mine):
            batch = self.corpus.batch(idx).to(self.device)
            sync = k == len(mine) - 1 or self.world == 1  # DDP syncs gradients on the last
            with nullcontext() if sync else self.ddp_model.no_sync():
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                    loss = loss_sum(self.ddp_model, batch, tc.label_smoothing)
                (loss * (self.world / step_tokens)).backward()
            self.window.add(loss.detach(), batch.n_tokens)
        if tc.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            update_ema(self.ema, self.model, tc.ema, self.state.step)
        self.state.step += 1
        self.state.target_tokens += step_tokens
        self.state.sentences += sum(len(idx) for idx in group)
        self.window.tokens += step_tokens
        self.progress.update(1)

    def log_progress(self) -> None:
        """Loss per token since the last log line, lr, speed: the one read from the device."""
        step = self.state.step
        value = self.window.loss_per_token()
        _check_finite(value, step)
        speed = self.window.tokens_per_second()
        lr = self.schedule.learning_rate(step)
        self.progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}", tok_s=f"{speed:.0f}")
        self.curves.record(step, {Metric.TRAIN_LOSS: value, Metric.TRAIN_LR: lr,
                                  Metric.TRAIN_SPEED: speed})
        log.info(f"step {step} epoch {self.state.epoch}: loss {value:.3f} lr {lr:.2e} "
                 f"{speed:.0f} target tokens/s")
        self.window = LossWindow(self.device)

    def validate(self) -> None:
        """Validate (rank 0), update the schedule, checkpoint. Every rank calls it."""
        step = self.state.step
        model = self.model if self.ema is None else self.ema
        mine = validate(model, self.corpus, self.cfg, self.device) if self.is_rank0 else None
        result = broadcast_from_rank0(mine, self.world)
        _check_finite(result.loss, step)  # before it could be saved
        self.curves.record(step, result.metrics())
        improved = self.schedule.validated(result.bleu, step)
        log.info(f"step {step}: {result.line(improved)}; "
                 f"lr {self.schedule.learning_rate(step + 1):.2e}")
        keep = self.cfg.train.keep_checkpoints  # for averaging (nmt.average)
        paths = [self.run.last, self.run.best] if improved else [self.run.last]
        self.save(paths + ([self.run.step_checkpoint(step)] if keep else []),
                  valid_bleu=result.bleu)
        if keep and self.is_rank0:
            self.run.drop_step_checkpoints_before_the_last(keep)
        self.window = LossWindow(self.device)  # validation time is not training speed

    def save(self, paths: list[Path], valid_bleu: float | None = None) -> None:
        """Rank 0 writes ``paths`` and run.json's steps and minutes. Collective (RNG states)."""
        rng_states = gather_from_all_ranks(rng_state(self.device), self.world)
        _check_finite(self.window.loss.item(), self.state.step)  # never save a diverged model
        self.saved_at = time.perf_counter()
        if not self.is_rank0:
            return
        seconds = self.state.train_seconds + self.saved_at - self.segment_start
        save_training(paths, model=self.model, optimizer=self.optimizer, ema=self.ema,
                      cfg=self.cfg, corpus=self.corpus,
                      progress=replace(self.state, train_seconds=seconds),
                      schedule=self.schedule.state, rng_states=rng_states, bf16=self.bf16,
                      valid_bleu=valid_bleu)
        self.run.facts.update(steps=self.state.step, train_minutes=round(seconds / 60, 2))

    def all_ranks_agree_checkpoint_due(self) -> bool:
        """Whether train.checkpoint_every_minutes have passed since the last save (rank 0's)."""
        minutes = self.cfg.train.checkpoint_every_minutes
        due = time.perf_counter() - self.saved_at >= 60 * minutes
        return bool(minutes) and broadcast_from_rank0(due, self.world)

    def all_ranks_agree_stop_reason(self, interrupted: bool) -> str | None:
        """Why training stops before the next step, or None: the only stopping rule."""
        tc = self.cfg.train
        out_of_time = time.perf_counter() - self.segment_start >= 60 * tc.max_minutes
        if interrupted:
            return INTERRUPTED
        if self.schedule.state.stopped_early:
            return f"early stop: no better BLEU in {tc.patience} validations"
        if self.state.step >= tc.max_steps:
            return f"train.max_steps ({tc.max_steps}) reached"
        if tc.max_epochs and \
                self.state.epoch + self.batches.epoch_done(self.state) >= tc.max_epochs:
            return f"train.max_epochs ({tc.max_epochs}) reached"
        if tc.max_minutes and broadcast_from_rank0(out_of_time, self.world):  # rank 0's clock
            return f"time budget of {tc.max_minutes} minutes reached"
        return None

    def finish(self, reason: str) -> TrainSummary:
        """Write the final checkpoint (no extra validation: it would change the schedule's
        state, and a run resumed from it would no longer match an uninterrupted one)."""
        now = time.perf_counter()
        self.state.train_seconds += now - self.segment_start
        self.segment_start = now
        if reason == INTERRUPTED:
            self.save([self.run.last])
            log.info(f"interrupted at step {self.state.step}; saved {self.run.last}: "
                     "--resume continues here")
        else:
            log.info(reason)
            self.save([self.run.last] + ([] if self.run.best.exists() else [self.run.best]))
        self.curves.close()
        collectives.stop(self.world)
        return summarize(self, interrupted=reason == INTERRUPTED)


def summarize(trainer: Trainer, interrupted: bool) -> TrainSummary:
    state = trainer.state
    best = trainer.schedule.state
    return TrainSummary(
        run_dir=str(trainer.run.root), steps=state.step, best_step=best.best_step,
        best_valid_bleu=round(best.best_bleu, 2), stopped_early=best.stopped_early,
        train_seconds=round(state.train_seconds, 1), parameters=trainer.n_params,
        target_tokens=state.target_tokens, sentences=state.sentences,
        filter=trainer.corpus.filter_counts, rank=trainer.rank, interrupted=interrupted)


# ----------------------------------------------------------------------------- setting up

def _open_run(cfg: Config, run: RunDir, resume: bool) -> tuple[Config, Source | None]:
    """Refuse a resume without a run, a new run over one, missing data files or a fine-tuning
    source that does not match; then the run's config (its paths absolute, a new fine-tuning
    run's source recorded) and the source to fine-tune from (nmt.finetune), whose vocabulary
    is now the run's."""
    cfg = replace(cfg, data=absolute_paths(cfg.data))
    if resume and not run.last.is_file():
        raise CheckpointError(f"{run.last}: no checkpoint to resume from")
    if not resume and run.last.exists():
        raise CheckpointError(f"{run.root}: already holds a run; pass --resume to continue it "
                              "or choose another run directory")
    check_inputs(cfg.data)  # a missing validation or test file, before the data is read
    if resume or not cfg.train.init_from:
        return cfg, None
    source = load_source(cfg)
    init_from = str(Path(cfg.train.init_from).expanduser().resolve())
    cfg = replace(cfg, train=replace(cfg.train, init_from=init_from, init_sha256=source.sha256))
    take_vocabulary(source, run.root, cfg.data.joint_vocab)
    return cfg, source


def start_process(tc: TrainConfig, run: RunDir) -> tuple[torch.device, bool, int, int]:
    """(device, bf16, rank, world): this process made ready to train (logging, threads, seed)."""
    device = pick_device(tc.device)
    bf16 = use_bf16(tc.precision, device)  # refuses bf16 without hardware support, first
    set_tf32(device, tc.tf32)
    rank, world = collectives.start(device)
    run.root.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # only rank 0 writes anything
        setup_logging(run.train_log)
        run.facts.update(hardware=_hardware(device, bf16, world), torch=torch.__version__)
    log.disabled = rank != 0
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + rank)  # DDP copies rank 0's initial weights to all ranks
    return device, bf16, rank, world


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


def _hardware(device: torch.device, bf16: bool, world: int) -> str:
    """What the run computes on, for the log and run.json: "cpu (AVX2), fp32 x 2 processes"."""
    return describe(device, bf16) + (f" x {world} processes" if world > 1 else "")


def _progress_bar(max_steps: int, step: int, enabled: bool) -> tqdm:
    return tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                mininterval=1.0, disable=None if enabled else True)


def build_model(cfg: Config, corpus: Corpus, device: torch.device
                ) -> tuple[Seq2Seq, torch.optim.Optimizer, Seq2Seq | None]:
    """A new model (checked to fit the device first), its optimizer and its moving average
    (train.ema; None without)."""
    make_model = partial(Seq2Seq, cfg.model, len(corpus.src_vocab), len(corpus.tgt_vocab))
    check_fits(make_model, device)
    model = make_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=fused_adam(device))
    return model, optimizer, copy.deepcopy(model).requires_grad_(False) if cfg.train.ema else None


def for_all_ranks(model: Seq2Seq, world: int, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DDP under torchrun (which copies rank 0's weights to all ranks)."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


@contextmanager
def ctrl_c_stops_between_steps(world: int) -> Iterator[threading.Event]:
    """Ctrl-C only sets the event: the loop stops between steps, where the state (model,
    optimizer, RNG, data position) is consistent and can be resumed exactly. A second
    Ctrl-C, or one under torchrun (the ranks would part ways), stops at once."""
    interrupt = threading.Event()

    def on_interrupt(signum, frame):
        if interrupt.is_set() or world > 1:
            raise KeyboardInterrupt
        interrupt.set()
        log.info("interrupted: stopping after this step (press Ctrl-C again to stop at once)")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupt
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- a step

class EpochBatches:
    """The epoch's batch list (cached), cut to whole steps, and the position in it."""

    def __init__(self, corpus: Corpus, settings: TrainConfig, batches_per_step: int):
        self.corpus = corpus
        self.settings = settings
        self.batches_per_step = batches_per_step  # world x train.accumulate
        self.cached: tuple[int, list[np.ndarray]] | None = None  # (epoch, its batches)

    def of_epoch(self, epoch: int) -> list[np.ndarray]:
        if self.cached is None or self.cached[0] != epoch:
            tc = self.settings
            batches = self.corpus.epoch(tc.batch_size, tc.batch_unit, tc.seed, epoch)
            if len(batches) < self.batches_per_step:
                raise ConfigError(f"train.accumulate: a step needs {self.batches_per_step} "
                                  "batches (processes x accumulate) but an epoch has "
                                  f"{len(batches)}")
            self.cached = (epoch, batches[:len(batches) - len(batches) % self.batches_per_step])
        return self.cached[1]

    def epoch_done(self, state: TrainState) -> bool:
        return state.batch_in_epoch >= len(self.of_epoch(state.epoch))

    def next_step(self, state: TrainState) -> list[np.ndarray]:
        """The next step's batches, moving ``state`` on (to the next epoch when this one is
        used up: an incomplete last step is skipped)."""
        if self.epoch_done(state):
            state.epoch += 1
            state.batch_in_epoch = 0
        first = state.batch_in_epoch
        state.batch_in_epoch += self.batches_per_step
        return self.of_epoch(state.epoch)[first:first + self.batches_per_step]


def loss_sum(model: Seq2Seq, batch: Batch, label_smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over the batch's real target tokens (a device scalar)."""
    logits = model(batch.src, batch.src_lengths, batch.tgt_in, batch.positions)  # [N, V]
    targets = batch.tgt_out.view(-1).index_select(0, batch.positions)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="sum")


@torch.no_grad()
def update_ema(average: torch.nn.Module, model: torch.nn.Module, ema: float, step: int) -> None:
    """average += (1 - decay) * (weights - average), with a decay that starts low (the first
    steps' weights are soon forgotten) and grows to train.ema: min(ema, (1 + t) / (10 + t))
    after t = ``step`` steps. The step count is the host's: no device value is read."""
    weight = 1.0 - min(ema, (1 + step) / (10 + step))
    for averaged, param in zip(average.parameters(), model.parameters()):
        averaged.lerp_(param, weight)


class LossWindow:
    """The training loss and target tokens since the last log line; the loss stays on the
    device until ``loss_per_token`` reads it."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.my_tokens = 0  # this rank's target tokens
        self.tokens = 0  # all ranks'
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, my_tokens: int) -> None:
        self.loss += loss.float()
        self.my_tokens += my_tokens

    def loss_per_token(self) -> float:
        return self.loss.item() / max(self.my_tokens, 1)

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NmtError(f"training diverged: the loss is {loss} at step {step}; lower train.lr "
                       "or raise train.warmup_steps; checkpoints/last.pt holds the model saved "
                       "before it")


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's (CPU, CUDA) RNG state."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


# ----------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class Validation:
    loss: float  # per target token, no label smoothing, all directions together
    ppl: float
    bleu: float  # greedy; with several directions their mean, which chooses best.pt
    bleu_by_direction: dict[str, float] = field(default_factory=dict)  # with several directions

    def bleus(self) -> str:
        """"33.27", or with several directions "de-en 33.10, en-de 30.02, mean 31.56"."""
        each = "".join(f"{name} {bleu:.2f}, " for name, bleu in self.bleu_by_direction.items())
        return each + ("mean " if self.bleu_by_direction else "") + f"{self.bleu:.2f}"

    def line(self, best: bool) -> str:
        return (f"valid loss {self.loss:.3f} ppl {self.ppl:.2f} BLEU {self.bleus()}"
                f"{' (best)' if best else ''}")

    def metrics(self) -> dict[str, float]:
        return {Metric.VALID_LOSS: self.loss, Metric.VALID_PPL: self.ppl,
                Metric.VALID_BLEU: self.bleu,
                **{f"{Metric.VALID_BLEU}_{name}": bleu
                   for name, bleu in self.bleu_by_direction.items()}}


@torch.no_grad()
def validate(model: Seq2Seq, corpus: Corpus, cfg: Config, device: torch.device) -> Validation:
    """Validation loss (per token, no smoothing) and greedy BLEU on each direction's dev set."""
    model.eval()
    total = 0.0  # summed loss
    tokens = 0
    bleu = {}
    greedy = validation_decode(cfg.decode)
    for valid in corpus.valid_sets:
        for idx in length_batches([len(ids) for ids in valid.src], cfg.decode.batch_size):
            batch = batch_of([valid.src[i] for i in idx], [valid.tgt[i] for i in idx])
            total += loss_sum(model, batch.to(device), 0.0).item()
            tokens += batch.n_tokens
        hyps = decode_corpus(model, valid.src, greedy, device, never=corpus.tgt_vocab.control_ids)
        text = corpus.tgt_vocab.decode([h[0].tokens for h in hyps])
        bleu[valid.name] = sacrebleu.corpus_bleu(text, [valid.ref]).score
    model.train()
    return Validation(loss=total / tokens, ppl=math.exp(min(total / tokens, 50)),
                      bleu=sum(bleu.values()) / len(bleu),
                      bleu_by_direction=bleu if len(bleu) > 1 else {})


# ----------------------------------------------------------------------------- curves

class Curves:
    """The learning curves: TensorBoard and metrics.jsonl (which the report plots), written
    by rank 0 only (``enabled``), from after ``step`` on."""

    def __init__(self, run: RunDir, step: int, enabled: bool):
        self.metrics = run.metrics
        self.writer = None
        if enabled:
            self.metrics.forget_after(step)
            self.writer = open_tensorboard(run.tensorboard, step)

    def record(self, step: int, values: dict[str, float]) -> None:
        """``values``: by ``Metric`` name."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(Metric.tag(name), value, step)
        self.metrics.append(step, values)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_tensorboard(folder: Path, step: int):
    """A SummaryWriter whose points start after ``step`` (purge_step: TensorBoard drops the
    points of the steps a resumed run trains again)."""
    from torch.utils.tensorboard import SummaryWriter  # imported late: slow to import

    # TensorBoard reads event files in name order, and a name starts with the second it was
    # made in: a file made in the previous one's second (a quick resume) could sort before it.
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)
    return SummaryWriter(str(folder), purge_step=step + 1)
