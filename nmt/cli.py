"""Console commands (nmt-train, -translate, -evaluate, -average, -serve, -export).

Whatever goes wrong prints one line ``nmt-<command>: error: ...`` to stderr: bad input and
failed file operations exit with status 2, anything else (a bug) with status 1. ``--debug``
shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from nmt.errors import NmtError

if TYPE_CHECKING:  # the config module is imported where a command needs it (start-up time)
    from nmt.config import Config


def run_command(prog: str, main: Callable[[argparse.Namespace], int],
                parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv``, run ``main`` and turn any failure into one line and an exit status."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks (for bug reports)")
    args = parser.parse_args(argv)
    if not args.debug:  # a helper thread (TensorBoard's writer) that fails says so in one line too
        threading.excepthook = lambda hook: print(
            f"{prog}: warning: {hook.thread.name if hook.thread else 'a thread'} stopped: "
            f"{' '.join(_describe(hook.exc_value).split())}", file=sys.stderr)
    try:
        return main(args)
    except (Exception, KeyboardInterrupt) as err:
        if args.debug:
            raise
        return _report(prog, err)


def _report(prog: str, err: BaseException) -> int:
    """One line on stderr for any failure, and the exit status."""
    if isinstance(err, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if isinstance(err, BrokenPipeError):  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 141
    message = _describe(err)
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1 if message.startswith("internal error") else 2


def _describe(err: BaseException) -> str:
    import torch
    from nmt.io import describe_os_error

    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
    if isinstance(err, NmtError):
        return str(err)
    if isinstance(err, OSError):
        return describe_os_error(err)
    if isinstance(err, out_of_memory) or "can't allocate memory" in str(err):
        return "out of memory; try a smaller batch size or model"
    return (f"internal error ({type(err).__name__}: {err}); "
            "rerun with --debug and report the traceback")


def _decode_args(parser: argparse.ArgumentParser) -> None:
    """The decoding flags: one per decode option that declares one (nmt.config.DecodeConfig),
    and the model's (checkpoint, device, ensemble, backend, int8)."""
    from nmt.config import decode_fields

    group = parser.add_argument_group("decoding (defaults: the run's decode section)")
    for option in decode_fields("flag"):  # not given: None, the run's setting
        flag = f"--{option.name.replace('_', '-')}"
        if isinstance(option.default, bool):  # a switch: given, it turns the option on
            group.add_argument(flag, action="store_const", const=True,
                               help=option.metadata["help"])
        else:
            group.add_argument(flag, type=type(option.default), choices=option.metadata["choices"],
                               help=option.metadata["help"])
    group.add_argument("--checkpoint", default="best", help="best, last, averaged, step-N (names "
                       "in RUN_DIR/checkpoints) or a checkpoint path")
    group.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    group.add_argument("--ensemble", nargs="+", default=[], metavar="RUN[:CKPT]",
                       help="decode with these models too, their per-step log-probabilities "
                       "averaged (same vocabularies; default checkpoint: best)")
    group.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                       help="onnx: decode a model folder's ONNX graphs (nmt-export --onnx) on "
                       "onnxruntime")
    group.add_argument("--int8", action="store_true",
                       help="decode with int8 weights and row-wise int8 activations in the "
                       "decoder's cells and linear layers (CPU; torch >= 2.4); on CPUs without "
                       "fast int8 products (VNNI or AMX) on onnxruntime (nmt[onnx]), else declined "
                       "with a warning")


def _decode_overrides(args: argparse.Namespace) -> dict:
    """The decode options given as flags (None: not given)."""
    from nmt.config import decode_fields

    return {option.name: getattr(args, option.name) for option in decode_fields("flag")}


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmt-train", description="Train a model; evaluate it on "
                                "data.test at the end.")
    p.add_argument("config", nargs="?", help="YAML config (default with --resume: the run's own)")
    p.add_argument("--run-dir", help="where the run is written (default: runs/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.dropout=0.2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--init-from", metavar="RUN_OR_MODEL", help="fine-tune: start from this run "
                   "directory, checkpoint or model folder (its weights and vocabulary; "
                   "train.init_from)")
    p.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    return p


def _train_config(args: argparse.Namespace) -> tuple[Path, Config]:
    """The run directory and the resolved config of nmt-train's arguments."""
    from nmt.config import load_config
    from nmt.directions import directions
    from nmt.rundir import RunDir

    if args.run_dir is None and args.config is None:
        raise NmtError("give a config file, or --run-dir with --resume")
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    config = args.config
    if config is None:
        if not args.resume:
            raise NmtError("give a config file (or --resume to continue a run)")
        config = RunDir(run_dir).config
        if not config.is_file():
            raise NmtError(f"{config}: not found; is {run_dir} a run directory?")
    cfg = load_config(config, args.set + ([f"train.init_from={args.init_from}"]
                                          if args.init_from else []))
    # found now, not after training
    if not args.no_test and cfg.decode.samples and any(d.test for d in directions(cfg.data)):
        raise NmtError("decode.samples: the final test scores search output; set it to 0 "
                       "(or pass --no-test)")
    return run_dir, cfg


def _print_test_scores(cfg: Config, run_dir: Path) -> None:
    """Score data.test (one test set per target language) and say where the reports are."""
    from nmt.device import pick_device
    from nmt.directions import directions, label, target_languages
    from nmt.evaluate import evaluate, format_scores

    tested = {d.tgt: d for d in directions(cfg.data) if d.test}
    for direction in tested.values():
        several = len(target_languages(cfg.data)) > 1
        report = evaluate([run_dir], split="test", device=str(pick_device(cfg.train.device)),
                          target_lang=direction.tgt if several else None)
        print(f"test set{f' {label(direction)}' if cfg.data.directions else ''} "
              f"({report['sentences']} sentences, beam {cfg.decode.beam_size}):")
        print(format_scores(report))
        print(f"report: {report['report_dir']}/report.html (and report.md, report.json)")


def train_main(argv: list[str] | None = None) -> int:
    def main(args):
        from nmt.io import describe_os_error
        from nmt.rundir import RunDir
        from nmt.train import train

        run_dir, cfg = _train_config(args)
        try:
            summary = train(cfg, run_dir, resume=args.resume)
        except OSError as err:  # disk full, permissions, a vanished file: say how to go on
            last = RunDir(run_dir).last
            if not last.is_file():
                raise
            raise NmtError(f"{describe_os_error(err)}; {last} is intact: "
                           f"'nmt-train --resume --run-dir {run_dir}' continues from it") from None
        if summary.interrupted:  # last.pt is saved; said as any interrupt is (exit status 130)
            raise KeyboardInterrupt
        if summary.rank != 0:  # under torchrun only rank 0 reports
            return 0
        best = (f"best validation BLEU {summary.best_valid_bleu} at step {summary.best_step}"
                if summary.best_step else "no validation ran: best.pt is the last model")
        print(f"\ntrained {summary.steps} steps in {summary.train_seconds:.0f} s; {best}"
              f"{' (stopped early)' if summary.stopped_early else ''}")
        print(f"run directory: {run_dir}")
        if not args.no_test:
            _print_test_scores(cfg, run_dir)
        return 0

    return run_command("nmt-train", main, train_parser(), argv)


def translate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmt-translate", description="Translate raw text, one "
                                "sentence per line (stdin or a file) to stdout or a file.")
    p.add_argument("run_dir")
    p.add_argument("-i", "--input", help="input file (default: stdin)")
    p.add_argument("-o", "--output", help="output file, written when complete (default: stdout)")
    p.add_argument("--n-best", type=int, default=1,
                   help="write the n best translations per line, tab-separated with scores")
    p.add_argument("--pieces", action="store_true",
                   help="debug: write subword pieces (the end marker shows as _)")
    p.add_argument("--chunk-lines", type=int, default=10_000,
                   help="lines read, translated and written at a time: memory stays flat for any "
                   "input length (from a terminal: each line at once)")
    p.add_argument("--constraints", metavar="FILE", help="terminology: per input line, the target "
                   "phrases (tab-separated; an empty line: none) its translation must hold (beam "
                   "search)")
    p.add_argument("--prefix", metavar="FILE", help="per input line, the target text its "
                   "translation starts with (an empty line: none)")
    _decode_args(p)
    return p


def translate_main(argv: list[str] | None = None) -> int:
    def main(args):
        from nmt.io import read_chunks, refuse_output_that_is_an_input, write_file
        from nmt.translate import Translator

        refuse_output_that_is_an_input(args.output, [args.input], stdin=not args.input)
        if args.chunk_lines < 1:
            raise NmtError(f"--chunk-lines: {args.chunk_lines} is out of range; "
                           "expected at least 1")
        translator = Translator.load(args.run_dir, args.checkpoint, args.device, args.int8,
                                     args.ensemble, args.backend)
        overrides = _decode_overrides(args)
        translator.settings(n_best=args.n_best, **overrides)  # bad values stop here, before output

        chunks = read_chunks(args.input, args.chunk_lines)
        steering = {}
        if args.constraints or args.prefix:  # one chunk: all of it checked before any decoding
            chunks = [[line for chunk in chunks for line in chunk]]
            steering = _steering(args, len(chunks[0]))

        def write(f):  # stdout: each chunk as soon as it is translated; -o: renamed when complete
            for lines in chunks:
                f.write("".join(line + "\n" for line in _translations(
                    translator, lines, args, overrides, steering)).encode("utf-8"))
                f.flush()

        write_file(args.output or "-", write)
        return 0

    return run_command("nmt-translate", main, translate_parser(), argv)


def _steering(args: argparse.Namespace, lines: int) -> dict:
    """--constraints and --prefix files as the Translator's keywords, one entry per input line."""
    from nmt.io import read_lines

    steering = {}
    for key, path in (("constraints", args.constraints), ("prefix", args.prefix)):
        if path:
            entries = read_lines(path)
            if len(entries) != lines:
                raise NmtError(f"{path}: {len(entries)} line{'s' * (len(entries) != 1)}, but the "
                               f"input has {lines}; --{key} takes one line per input line")
            steering[key] = [line.split("\t") if line else [] for line in entries] \
                if key == "constraints" else entries
    return steering


def _lines_named(err: NmtError, args: argparse.Namespace) -> NmtError:
    """The Translator's ``constraints[i][j]``, ``prefix[i]`` and ``sentence i`` as file and line."""
    import re

    text = re.sub(r"constraints\[(\d+)\]\[(\d+)\]",
                  lambda m: f"{args.constraints}:{int(m[1]) + 1}: phrase {int(m[2]) + 1}", str(err))
    text = re.sub(r"prefix\[(\d+)\]", lambda m: f"{args.prefix}:{int(m[1]) + 1}", text)
    files = " and ".join(path for path in (args.prefix, args.constraints) if path)
    text = re.sub(r"^sentence (\d+)", lambda m: f"{files}: line {int(m[1]) + 1}", text)
    return type(err)(text)


def _translations(translator, lines: list[str], args: argparse.Namespace, overrides: dict,
                  steering: dict) -> list[str]:
    """Output lines for ``lines``: translations, or n-best lists with scores, or pieces."""
    from nmt.vocab import END

    try:
        if translator.settings(**overrides).samples:
            return ["\t".join(texts)
                    for texts in translator.sample(lines, **steering, **overrides)]
        found = translator.hypotheses(lines, False, n_best=args.n_best, **steering, **overrides)
    except NmtError as err:
        raise _lines_named(err, args) from None
    vocab = translator.tgt_vocab
    out = []
    for hyps, texts in zip(found, translator.texts(lines, found, **overrides)):
        if args.pieces:
            texts = [" ".join(vocab.pieces(h.tokens + [END])) for h in hyps]
        if args.n_best > 1:
            out.append("\t".join(f"{t}\t{h.score:.4f}" for t, h in zip(texts, hyps)))
        else:
            out.append(texts[0] if texts else "")
    return out


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmt-evaluate", description="Translate a test set with one "
                                "or more runs and/or take hypothesis files, and write a report "
                                "folder (report.md, self-contained report.html, report.json, "
                                "PNGs).")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run directories to translate with")
    p.add_argument("--hyp", action="append", default=[], help="a hypothesis file (repeatable)")
    p.add_argument("--split", default="test", choices=["test", "valid"],
                   help="which of the first run's sets to translate")
    p.add_argument("--src", help="raw source file (instead of --split)")
    p.add_argument("--ref", help="raw reference file")
    p.add_argument("--out", help="report folder (default for one run: <run_dir>/reports/<name>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _decode_args(p)
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    def main(args):
        from nmt.evaluate import evaluate, format_scores

        report = evaluate(args.run_dirs, args.hyp, args.split, args.src, args.ref, args.checkpoint,
                          args.out, args.device, args.int8, args.ensemble, args.backend,
                          **_decode_overrides(args))
        if args.json:
            print(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            print(format_scores(report))
            print(f"report: {report['report_dir']}/report.html (and report.md, report.json)")
        return 0

    return run_command("nmt-evaluate", main, evaluate_parser(), argv)


def average_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nmt-average", description="Average checkpoints of one run "
                                "into a checkpoint for decoding (default: "
                                "RUN_DIR/checkpoints/averaged.pt).")
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="the N most recent kept checkpoints")
    which.add_argument("--best", type=int, metavar="N", help="the N kept checkpoints with the "
                       "best validation BLEU")
    which.add_argument("--checkpoints", nargs="+", metavar="CKPT",
                       help="these checkpoints (names or paths)")
    p.add_argument("-o", "--output", help="where the averaged checkpoint goes")

    def main(args):
        from nmt.average import average, choose
        from nmt.rundir import RunDir, resolve_checkpoint
        from nmt.io import refuse_output_that_is_an_input

        run_dir = Path(args.run_dir)
        if args.checkpoints:
            paths = [resolve_checkpoint(run_dir, name) for name in args.checkpoints]
        else:
            if (args.last or args.best) < 1:
                raise NmtError(f"--{'last' if args.last is not None else 'best'}: "
                               "expected at least 1")
            resolve_checkpoint(run_dir, "last")  # a run directory, with a run in it
            paths = choose(run_dir, args.last or 0, args.best or 0)
        output = Path(args.output or RunDir(run_dir).averaged)
        refuse_output_that_is_an_input(output, paths)
        average(paths).save(output)
        print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) "
              f"into {output}")
        return 0

    return run_command("nmt-average", main, p, argv)


def serve_main(argv: list[str] | None = None) -> int:
    from dataclasses import fields

    from nmt.serve import Limits

    p = argparse.ArgumentParser(prog="nmt-serve", description="Serve a run over HTTP: POST "
                                "/translate, GET /health, GET /info, and a page at / (needs: pip "
                                "install 'nmt[serve]').")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--checkpoint", default="best",
                   help="best, last, averaged, step-N or a checkpoint path")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    for limit in fields(Limits):
        p.add_argument(f"--{limit.name.replace('_', '-')}", type=type(limit.default),
                       default=limit.default, help=f"{limit.metadata['help']} (default "
                       f"{limit.default})")

    def main(args):
        from nmt.serve import serve

        limits = Limits(**{limit.name: getattr(args, limit.name) for limit in fields(Limits)})
        serve(args.run_dir, args.host, args.port, args.checkpoint, args.device, limits)
        return 0

    return run_command("nmt-serve", main, p, argv)


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nmt-export", description="Write a run's model as a model "
                                "folder to share: config.json, model.safetensors, the "
                                "sentencepiece model(s) and a model card (README.md) in the "
                                "Hugging Face Hub's format.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("out", metavar="OUT", help="the model folder to write (new, or an empty folder)")
    p.add_argument("--checkpoint", default="best",
                   help="best, last, averaged, step-N or a checkpoint path")
    p.add_argument("--license", default="other", help="the card's license id (the training data's "
                   "terms apply; default: other)")
    p.add_argument("--onnx", action="store_true", help="also the encoder and the decoder step as "
                   "ONNX graphs, for --backend onnx (needs nmt[onnx])")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="RUN[:CKPT]",
                   help=argparse.SUPPRESS)

    def main(args):
        from nmt.translate import Translator

        if args.ensemble:
            raise NmtError("--ensemble: a model folder holds one model; "
                           "export each member's run on its own")
        out = Translator.load(args.run_dir, args.checkpoint).save_pretrained(args.out, args.license,
                                                                             args.onnx)
        print(f"model folder: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
        return 0

    return run_command("nmt-export", main, p, argv)
