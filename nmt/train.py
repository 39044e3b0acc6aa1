"""Training: data and vocabularies, the loop, validation, checkpoints, resume.

Resuming from ``checkpoints/last.pt`` restores the model, the optimizer, the
step, the learning-rate state, the RNG state and the position in the data
(epoch and batch), so a resumed run computes exactly what an uninterrupted
one would have.

Launched by ``torchrun`` the same loop runs data-parallel (DDP; NCCL on GPUs,
gloo on CPUs). One step consumes ``world_size x train.accumulate``
consecutive batches of the epoch's list: rank r trains on batches r, r + W,
... of them, and the loss is normalised by the tokens of all of them, so the
update equals a single process's with ``train.accumulate = W x accumulate``.
Only rank 0 validates and writes checkpoints, logs and reports.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import sacrebleu
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from nmt.checkpoint import (check_vocab, load_checkpoint, pick_device, save_checkpoint,
                            use_bf16, vocab_paths, vocab_record)
from nmt.config import Config, save_config
from nmt.data import epoch_batches, filter_pairs, load_split, make_batch
from nmt.errors import CheckpointError, ConfigError
from nmt.model import Seq2Seq
from nmt.translate import decode_corpus
from nmt.vocab import PAD, Vocab, train_vocab

log = logging.getLogger("nmt")


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


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


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


class Corpus:
    """Training and validation data as piece ids, with the run's vocabularies."""

    def __init__(self, cfg: Config, run_dir: Path, reuse_vocab: bool, world: int = 1):
        data = cfg.data
        train_src, train_tgt = load_split(data, data.train, "training")
        src_path, tgt_path = vocab_paths(run_dir, data.joint_vocab)
        if world > 1:  # rank 0 trains the vocabulary; the other ranks read it
            if dist.get_rank() == 0 and not reuse_vocab:
                self._train_vocabs(cfg, train_src, train_tgt, src_path, tgt_path)
            dist.barrier()
            reuse_vocab = True
        if reuse_vocab:
            self.src_vocab, self.tgt_vocab = Vocab(src_path), Vocab(tgt_path)
        else:
            self._train_vocabs(cfg, train_src, train_tgt, src_path, tgt_path)
        src_ids, tgt_ids = self.src_vocab.encode(train_src), self.tgt_vocab.encode(train_tgt)
        keep, counts = filter_pairs(src_ids, tgt_ids, data.max_len, data.max_len_ratio)
        log.info(f"training pairs: {len(src_ids)} read, {counts['kept']} kept, dropped "
                 f"{counts['empty']} empty, {counts['too_long']} longer than {data.max_len} pieces, "
                 f"{counts['bad_ratio']} with length ratio over {data.max_len_ratio}")
        if not keep:
            raise CheckpointError(f"{data.train}: no training pair left after length filtering")
        self.filter_counts = counts
        self.src = [src_ids[i] for i in keep]
        self.tgt = [tgt_ids[i] for i in keep]
        self.src_lens = np.array([len(s) for s in self.src])
        self.tgt_lens = np.array([len(t) for t in self.tgt])
        log.info(f"vocabulary: {len(self.src_vocab)} source, {len(self.tgt_vocab)} target pieces")
        self.valid_src_text, self.valid_ref = (load_split(data, data.valid, "validation")
                                               if data.valid else ([], []))
        self.valid_src = self.src_vocab.encode(self.valid_src_text)
        self.valid_tgt = self.tgt_vocab.encode(self.valid_ref)

    def _train_vocabs(self, cfg: Config, train_src: list[str], train_tgt: list[str],
                      src_path: Path, tgt_path: Path) -> None:
        data = cfg.data
        if data.joint_vocab:
            self.src_vocab = self.tgt_vocab = train_vocab(train_src + train_tgt, src_path,
                                                          data.vocab_size, data.subword_type)
        else:
            self.src_vocab = train_vocab(train_src, src_path, data.vocab_size, data.subword_type)
            self.tgt_vocab = train_vocab(train_tgt, tgt_path, data.vocab_size, data.subword_type)


def loss_sum(model: Seq2Seq, batch, label_smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over the batch's real target tokens."""
    logits = model(batch.src, batch.src_lengths, batch.tgt_in)  # [N, V] at real positions
    return F.cross_entropy(logits, batch.tgt_out[batch.tgt_out != PAD],
                           label_smoothing=label_smoothing, reduction="sum")


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
    greedy = replace(cfg.decode, beam_size=1, n_best=1)
    hyps = decode_corpus(model, corpus.valid_src, greedy, device)
    text = corpus.tgt_vocab.decode([h[0].tokens for h in hyps])
    bleu = sacrebleu.corpus_bleu(text, [corpus.valid_ref]).score
    model.train()
    return {"loss": total / tokens, "ppl": math.exp(min(total / tokens, 50)), "bleu": bleu}


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train a model in ``run_dir``; return a summary (best step, BLEU, wall time)."""
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if resume and not last_path.is_file():
        raise CheckpointError(f"{last_path}: no checkpoint to resume from")
    if not resume and last_path.exists():
        raise CheckpointError(f"{run_dir}: already holds a run; pass --resume to continue it "
                              "or choose another run directory")
    tc = cfg.train
    device = pick_device(tc.device)
    bf16 = use_bf16(tc.precision, device)  # refuses bf16 without hardware support, before any work
    rank, world = start_distributed(device)
    main = rank == 0  # only rank 0 writes anything
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        setup_logging(run_dir / "train.log")
    else:
        log.disabled = True
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + rank)  # DDP copies rank 0's initial weights to all ranks

    ckpt = load_checkpoint(last_path, device) if resume else None
    if ckpt is not None:
        # These shape the model, the vocabulary and the epoch's batch list.
        fixed = [("data", k) for k in ckpt["config"]["data"] if k not in ("valid", "test")] + \
                [("model", k) for k in ckpt["config"]["model"]] + \
                [("train", k) for k in ("seed", "batch_size", "batch_unit")]
        for section, key in fixed:
            value = ckpt["config"][section][key]
            if getattr(getattr(cfg, section), key) != value:
                raise CheckpointError(f"{last_path}: {section}.{key} was {value!r} in this run; "
                                      "it cannot change on --resume")
    if main:
        save_config(cfg, run_dir / "config.yaml")
    corpus = Corpus(cfg, run_dir, reuse_vocab=resume, world=world)
    model = Seq2Seq(cfg.model, len(corpus.src_vocab), len(corpus.tgt_vocab)).to(device)
    # The fused kernel updates all parameters in one pass (CPU support since torch 2.4);
    # the per-parameter loop it replaces cost 10 % of a step on 2 cores.
    fused = device.type == "cuda" or torch_version() >= (2, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=fused)
    state = TrainState()
    if ckpt is not None:
        check_vocab(ckpt, "src", corpus.src_vocab, last_path)
        check_vocab(ckpt, "tgt", corpus.tgt_vocab, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["train_state"])
        state.stopped_early = bool(tc.patience) and state.bad_validations >= tc.patience
        rng = ckpt["rng"]
        if rank < len(rng["cpu"]):  # the same world size: each rank continues its own stream
            torch.set_rng_state(rng["cpu"][rank])
            if device.type == "cuda" and rng["cuda"][rank] is not None:
                torch.cuda.set_rng_state(rng["cuda"][rank], device)
        log.info(f"resumed from {last_path} at step {state.step} (epoch {state.epoch}, "
                 f"batch {state.batch_in_epoch})")
        if ckpt.get("bf16", bf16) != bf16:  # e.g. precision auto on a CPU without bf16
            log.warning(f"the run trained {'in bf16' if ckpt['bf16'] else 'in fp32'} and goes on "
                        f"{'in bf16' if bf16 else 'in fp32'}: it will not match an uninterrupted run")
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"model: {n_params:,} parameters on {device}"
             f"{f' x {world} processes' if world > 1 else ''}, {'bf16 autocast' if bf16 else 'fp32'}; "
             f"run directory {run_dir}")
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter  # imported late: slow to import
        writer = SummaryWriter(str(run_dir / "tensorboard"))

    def record(**values) -> None:
        """The curves, to TensorBoard and to metrics.jsonl (which the evaluation report plots)."""
        if not main:
            return
        for key, value in values.items():
            writer.add_scalar(key.replace("_", "/", 1), value, state.step)
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.step, **values}) + "\n")

    def checkpoint(paths: list[Path]) -> None:
        """Every rank calls this (to share its RNG state); rank 0 writes ``paths``."""
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        states = [rng]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, rng)
        if not main:
            return
        payload = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "train_state": asdict(state), "config": cfg.to_dict(), "bf16": bf16,
            "rng": {"cpu": [s[0] for s in states], "cuda": [s[1] for s in states]},
            "vocab": {"src": vocab_record(corpus.src_vocab), "tgt": vocab_record(corpus.tgt_vocab)}}
        for path in paths:
            save_checkpoint(path, payload)

    def learning_rate_at(step: int) -> float:
        warmup = min(1.0, step / tc.warmup_steps) if tc.warmup_steps else 1.0
        return max(tc.lr * state.lr_scale, tc.min_lr) * warmup

    def run_validation() -> bool:
        """Validate (rank 0), update the schedule and checkpoint; True when training should stop."""
        result = broadcast(validate(model, corpus, cfg, device) if main else None, world)
        record(**{f"valid_{key}": value for key, value in result.items()})
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
                 f"lr {learning_rate_at(state.step + 1):.2e}")
        checkpoint([last_path, best_path] if improved else [last_path])
        return state.stopped_early

    per_step = world * tc.accumulate  # batches of the epoch's list consumed by one step
    model.train()
    progress = tqdm(total=tc.max_steps, initial=state.step, desc="train", unit="step",
                    dynamic_ncols=True, mininterval=1.0, disable=None if main else True)
    window_tokens, window_start = 0, time.perf_counter()
    segment_start = time.perf_counter()
    done = (state.step >= tc.max_steps or state.stopped_early
            or bool(tc.max_epochs) and state.epoch >= tc.max_epochs)
    # Ctrl-C only raises a flag; the loop stops between steps, where the state
    # (model, optimizer, RNG, data position) is consistent and can be resumed exactly.
    interrupted = []

    def on_interrupt(signum, frame):
        if interrupted or world > 1:
            raise KeyboardInterrupt
        interrupted.append(True)
        log.info("interrupted: stopping after this step (press Ctrl-C again to stop at once)")

    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while not done:
            batches = epoch_batches(corpus.src_lens, corpus.tgt_lens, tc.batch_size,
                                    tc.batch_unit, tc.seed, state.epoch)
            if len(batches) < per_step:
                raise ConfigError(f"train.accumulate: a step needs {per_step} batches "
                                  f"(processes x accumulate) but an epoch has {len(batches)}")
            usable = len(batches) - len(batches) % per_step  # an incomplete last step is skipped
            for first in range(state.batch_in_epoch, usable, per_step):
                group = batches[first:first + per_step]
                step_tokens = int(sum(corpus.tgt_lens[idx].sum() + len(idx) for idx in group))
                lr = learning_rate_at(state.step + 1)
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                mine = group[rank::world]
                for k, idx in enumerate(mine):
                    batch = make_batch([corpus.src[i] for i in idx],
                                       [corpus.tgt[i] for i in idx]).to(device)
                    # DDP averages gradients over ranks: scale so the sum is per token of the step.
                    sync = k == len(mine) - 1 or world == 1
                    with nullcontext() if sync else trained.no_sync():
                        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                            loss = loss_sum(trained, batch, tc.label_smoothing) * (world / step_tokens)
                        loss.backward()
                if tc.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
                optimizer.step()
                state.step += 1
                state.batch_in_epoch = first + per_step
                state.target_tokens += step_tokens
                state.sentences += sum(len(idx) for idx in group)

                window_tokens += step_tokens
                if state.step % tc.log_every == 0:
                    speed = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    value = loss.item() * step_tokens / world / batch.n_tokens  # last batch, per token
                    progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}", tok_s=f"{speed:.0f}")
                    record(train_loss=value, train_lr=lr, train_target_tokens_per_s=speed)
                    log.info(f"step {state.step} epoch {state.epoch}: loss {value:.3f} "
                             f"lr {lr:.2e} {speed:.0f} target tokens/s")
                    window_tokens, window_start = 0, time.perf_counter()
                progress.update(1)
                if state.step % tc.valid_every == 0 and corpus.valid_src and run_validation():
                    log.info(f"early stop: no better BLEU in {tc.patience} validations")
                    done = True
                if state.step >= tc.max_steps:
                    done = True
                if tc.max_minutes and broadcast(
                        time.perf_counter() - segment_start >= 60 * tc.max_minutes, world):
                    log.info(f"time budget of {tc.max_minutes} minutes reached")
                    done = True
                if interrupted:
                    break
                if done:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                if tc.max_epochs and state.epoch >= tc.max_epochs:
                    done = True
            if interrupted:
                state.train_seconds += time.perf_counter() - segment_start
                checkpoint([last_path])
                log.info(f"interrupted at step {state.step}; saved {last_path}: --resume continues here")
                raise KeyboardInterrupt
    finally:
        progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    state.train_seconds += time.perf_counter() - segment_start
    # No extra validation here: it would change the schedule's state, and a run
    # resumed from this checkpoint would no longer match an uninterrupted one.
    checkpoint([last_path] if best_path.exists() else [last_path, best_path])
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"run_dir": str(run_dir), "steps": state.step, "best_step": state.best_step,
            "best_valid_bleu": round(state.best_bleu, 2), "stopped_early": state.stopped_early,
            "train_seconds": round(state.train_seconds, 1), "parameters": n_params,
            "target_tokens": state.target_tokens, "sentences": state.sentences,
            "filter": corpus.filter_counts, "rank": rank}
