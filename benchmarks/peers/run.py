#!/usr/bin/env python3
"""Train and time OpenNMT-py 3.5.1 and Joey NMT 2.3.0 on nmt's data and machine.

    python benchmarks/peers/run.py setup onmt|joey          # venv under $NMT_PEERS_HOME
    python benchmarks/peers/run.py onmt --steps 200          # train, decode, print one JSON object
    python benchmarks/peers/run.py joey --steps 200
    python benchmarks/peers/run.py table A.json B.json ...   # markdown table (nmt's train_speed.py JSON too)

Both toolkits run unmodified through their command-line tools, in their own
virtual environments under $NMT_PEERS_HOME (default ~/.cache/nmt-peers), where
the prepared data, the runs and the result files go as well. See README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOME = Path(os.environ.get("NMT_PEERS_HOME", "~/.cache/nmt-peers")).expanduser()
TORCH = "2.13.0"  # the version nmt is benchmarked with; every venv gets exactly this one

TOOLKITS = {
    "onmt": {"name": "OpenNMT-py", "dist": "OpenNMT-py", "check": "import onmt.bin.train, onmt.bin.translate"},
    "joey": {"name": "Joey NMT", "dist": "joeynmt", "check": "import joeynmt.training, joeynmt.prediction"},
}
# A training-progress line: its timestamp and its step number.
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
STEP = {"onmt": re.compile(r"Step (\d+)/"), "joey": re.compile(r"Step:\s+(\d+),")}
# How long each toolkit says its generation took (it excludes start-up and model loading).
GEN_SECONDS = {"onmt": re.compile(r"Total translation time \(s\):\s*([\d.]+)"),
               "joey": re.compile(r"Generation took\s*([\d.]+)\s*\[sec\]")}


def log(msg: str) -> None:
    """Progress goes to stderr: stdout carries only the result JSON."""
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup

def venv_dir(tk: str) -> Path:
    return HOME / "venvs" / tk


def _requirements(tk: str) -> Path:
    return HERE / f"requirements-{tk}.txt"


def _marker(tk: str) -> str:
    """What a finished setup records: a changed pin list or torch version means set up again."""
    return hashlib.sha256(_requirements(tk).read_bytes() + TORCH.encode()).hexdigest()


def is_ready(tk: str) -> bool:
    ready = venv_dir(tk) / "nmt-peers-ready"
    return ready.exists() and ready.read_text().strip() == _marker(tk)


def setup(tk: str, torch_index: str | None = None) -> None:
    """Create the toolkit's venv: torch first, then the pinned packages without dependencies."""
    venv = venv_dir(tk)
    if venv.exists():
        shutil.rmtree(venv)  # start clean: a half-finished install is worse than none
    log(f"creating {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    index = ["--index-url", torch_index] if torch_index else []
    # Ask pip which torch file it would take before downloading anything: on Linux,
    # the plain torch wheel on PyPI is a CUDA build of several GB.
    report = subprocess.run(pip + ["--dry-run", "--quiet", "--no-deps", "--report", "-", f"torch=={TORCH}"] + index,
                            check=True, capture_output=True, text=True).stdout
    chosen = json.loads(report)["install"][0]["metadata"]["version"]
    if sys.platform.startswith("linux") and "+cpu" not in chosen:
        sys.exit(f"pip would install torch {chosen}, a CUDA build on Linux; pass "
                 "--torch-index-url https://download.pytorch.org/whl/cpu (or a local CPU wheel)")
    log(f"installing torch {chosen}")
    subprocess.run(pip + ["--quiet", f"torch=={TORCH}"] + index, check=True)
    log(f"installing {_requirements(tk).name} with --no-deps")
    subprocess.run(pip + ["--quiet", "--no-deps", "-r", str(_requirements(tk))], check=True)
    # The pins must not have replaced torch, and the toolkit must import.
    got = subprocess.run([py, "-c", f"import torch; {TOOLKITS[tk]['check']}; print(torch.__version__)"],
                         check=True, capture_output=True, text=True).stdout.strip()
    if not got.startswith(TORCH):
        sys.exit(f"torch {got} ended up in {venv}, not {TORCH}")
    (venv / "nmt-peers-ready").write_text(_marker(tk) + "\n")
    log(f"{tk} ready: torch {got}")


# --------------------------------------------------------------------------- data

SPLITS = ("train", "val", "test2016")


def prepare_data(raw: Path, src: str, tgt: str, vocab_size: int) -> Path:
    """One joint sentencepiece BPE model on train.src + train.tgt; every split as
    space-separated pieces (the only text the toolkits see) and vocab.txt, the
    pieces without sentencepiece's control symbols, given to both toolkits as their
    shared vocabulary. Redone only when the raw text or the size changes."""
    inputs = [raw / f"{s}.{lang}" for s in SPLITS for lang in (src, tgt)]
    digest = hashlib.sha256(str(vocab_size).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    out = HOME / "data" / f"{raw.name}-{src}{tgt}-bpe{vocab_size}"
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["inputs_sha256"] == digest.hexdigest():
        return out
    import sentencepiece as spm

    log(f"preparing {out}")
    (out / "sp").mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(str(raw / f"train.{lang}") for lang in (src, tgt)), model_prefix=str(out / "spm"),
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0, num_threads=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    (out / "vocab.txt").write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    meta: dict = {"inputs_sha256": digest.hexdigest(), "corpus": raw.name, "spm": f"bpe {vocab_size}, joint",
                  "toolkit_vocab_pieces": len(pieces), "splits": {}}
    for split in SPLITS:
        for lang in (src, tgt):
            lines = (raw / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            encoded = sp.encode(lines, out_type=str)
            (out / "sp" / f"{split}.{lang}").write_text("".join(" ".join(e) + "\n" for e in encoded), encoding="utf-8")
            n = sum(map(len, encoded))
            meta["splits"][f"{split}.{lang}"] = {"sentences": len(lines), "pieces": n, "mean_pieces": n / len(lines)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return out


# --------------------------------------------------------------------------- configs

def onmt_config(a: argparse.Namespace, data: Path, work: Path) -> dict:
    """OpenNMT-py 3.5.1 in nmt's reference setting (README.md lists what differs)."""
    return {
        "save_data": str(work / "onmt"), "src_vocab": str(data / "vocab.txt"), "tgt_vocab": str(data / "vocab.txt"),
        "share_vocab": True, "src_vocab_size": 100000, "tgt_vocab_size": 100000, "vocab_size_multiple": 1,
        "data": {"corpus_1": {"path_src": str(data / "sp" / f"train.{a.src}"),
                              "path_tgt": str(data / "sp" / f"train.{a.tgt}")}},
        "save_model": str(work / "model"), "save_checkpoint_steps": a.steps, "keep_checkpoint": 1,
        "train_steps": a.steps, "valid_steps": 10 ** 9, "report_every": a.log_every, "seed": a.seed,
        # no loader processes competing for the 2 cores
        "num_workers": 0,
        # The default bucket (262,144 examples) cycles Multi30k ~9 times into one pool
        # and costs ~2.7 GB; a corpus-sized pool keeps the same length-sorted batches.
        "bucket_size": a.onmt_bucket_size,
        "model_type": "text", "encoder_type": "brnn", "decoder_type": "rnn", "rnn_type": "LSTM",
        "word_vec_size": 256, "enc_layers": 2, "dec_layers": 2,
        "enc_hid_size": 512,  # brnn splits it: 256 per direction
        "dec_hid_size": 512, "global_attention": "general", "input_feed": 1, "bridge": False, "dropout": [0.3],
        "optim": "adam", "learning_rate": 1e-3, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "batch_size": 64, "batch_type": "sents", "normalization": "tokens", "max_grad_norm": 1.0,
        "label_smoothing": 0.0, "accum_count": [1],
    }


def joey_config(a: argparse.Namespace, data: Path, work: Path, beam: int = 1, ckpt: Path | None = None) -> dict:
    """Joey NMT 2.3.0 in nmt's reference setting; with ckpt, the decoding config."""
    def side(lang: str) -> dict:
        return {"lang": lang, "level": "word", "lowercase": False, "normalize": False, "max_length": -1,
                "min_length": -1, "voc_file": str(data / "vocab.txt"), "tokenizer_cfg": {"pretokenizer": "none"}}

    def embeddings() -> dict:
        return {"embedding_dim": 256, "scale": False, "dropout": 0.3}

    paths = ({"test": str(data / "sp" / "test2016")} if ckpt else
             {"train": str(data / "sp" / "train"), "dev": str(data / "sp" / "val")})
    testing = {"beam_size": beam, "beam_alpha": -1, "batch_size": 64, "batch_type": "sentence",
               "max_output_length": a.max_len, "eval_metrics": ["bleu"]}
    if ckpt:
        testing["load_model"] = str(ckpt)
    return {
        "name": "nmt-peers", "joeynmt_version": "2.3.0", "model_dir": str(work / "model"),
        "use_cuda": False, "fp16": False, "random_seed": a.seed, "num_workers": 0,
        "data": {**paths, "dataset_type": "plain", "src": side(a.src), "trg": side(a.tgt)},
        "testing": testing,
        "training": {
            "optimizer": "adam", "adam_betas": [0.9, 0.999], "learning_rate": 1e-3, "learning_rate_min": 1e-12,
            # Joey 2.3.0 insists on a scheduler and its "plateau" passes an argument torch
            # 2.13 removed: an exponential one with factor 1.0 keeps the rate constant.
            "scheduling": "exponential", "decrease_factor": 1.0,
            "clip_grad_norm": 1.0, "batch_size": 64, "batch_type": "sentence", "normalization": "tokens",
            "label_smoothing": 0.0, "epochs": 10 ** 6, "updates": a.steps, "validation_freq": 10 ** 9,
            "logging_freq": a.log_every, "shuffle": True, "overwrite": True, "keep_best_ckpts": 1,
            "early_stopping_metric": "ppl", "print_valid_sents": [],
        },
        "model": {
            "tied_embeddings": False, "tied_softmax": False,
            "encoder": {"type": "recurrent", "rnn_type": "lstm", "hidden_size": 256, "bidirectional": True,
                        "num_layers": 2, "dropout": 0.3, "embeddings": embeddings()},
            "decoder": {"type": "recurrent", "rnn_type": "lstm", "hidden_size": 512, "num_layers": 2,
                        "dropout": 0.3, "hidden_dropout": 0.3, "attention": "luong", "input_feeding": True,
                        "init_hidden": "last", "embeddings": embeddings()},
        },
    }


# --------------------------------------------------------------------------- running

def measured(cmd: list[str], log_path: Path, env: dict) -> tuple[float, float, int]:
    """Run cmd with its output in log_path; (wall seconds, peak RSS MiB, exit code).
    Peak RSS from GNU time -v where present, else from the kernel's rusage of the child."""
    gnu_time = Path("/usr/bin/time")
    time_file = log_path.with_suffix(".time")
    what = " ".join(cmd[:4])
    if gnu_time.exists():
        cmd = [str(gnu_time), "-v", "-o", str(time_file)] + cmd
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child only, not earlier ones
    wall = time.perf_counter() - start
    rss_kib = usage.ru_maxrss  # KiB on Linux
    if gnu_time.exists():  # the toolkit itself, not the time wrapper
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
        rss_kib = int(found.group(1)) if found else rss_kib
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-30:])
        sys.exit(f"{what} ... failed (exit {code}); the end of {log_path}:\n{tail}")
    return wall, rss_kib / 1024, code


def progress(tk: str, log_path: Path) -> list[tuple[int, float]]:
    """(step, time) of every training-progress line in the toolkit's log."""
    points = []
    for line in log_path.read_text(errors="replace").splitlines():
        step, stamp = STEP[tk].search(line), STAMP.search(line)
        if step and stamp:
            t = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(stamp.group(2)) / 1000
            points.append((int(step.group(1)), t))
    return points


def bench(tk: str, a: argparse.Namespace) -> dict:
    """Prepare the data, train, decode test2016 and score; the result as a dict."""
    import sacrebleu
    import sentencepiece as spm
    import torch
    import yaml

    sys.path.insert(0, str(REPO / "benchmarks"))
    import machine

    data = prepare_data(Path(a.data).resolve(), a.src, a.tgt, a.vocab_size)
    meta = json.loads((data / "meta.json").read_text())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = HOME / "runs" / f"{tk}-{a.steps}-{stamp}"
    work.mkdir(parents=True)
    threads = str(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONUNBUFFERED": "1",
           # OpenNMT-py 3.5.1 checkpoints pickle an argparse.Namespace, which torch >= 2.6
           # refuses to load by default; these are checkpoints this run has just written.
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    torch.set_num_threads(a.threads)  # so that machine.describe() records what the toolkits ran with
    bindir = venv_dir(tk) / "bin"

    def write(name: str, cfg: dict) -> str:
        (work / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        return str(work / name)

    # -- training
    if tk == "onmt":
        cmd = [str(bindir / "onmt_train"), "-config", write("train.yaml", onmt_config(a, data, work))]
    else:
        cmd = [sys.executable, "-m", "joeynmt", "train", write("train.yaml", joey_config(a, data, work)),
               "--skip-test"]
    log(f"training {tk} for {a.steps} steps in {work}")
    wall, rss, _ = measured(cmd, work / "train.log", env)
    points = progress(tk, work / "train.log")
    if len(points) < 2:
        sys.exit(f"fewer than two progress lines in {work / 'train.log'}: lower --log-every")
    (s0, t0), (s1, t1) = points[0], points[-1]
    seconds, steps = t1 - t0, s1 - s0
    # Neither toolkit reports pieces without specials, so count as steps x 64 sentences
    # x the corpus mean (both draw 64-sentence batches from the whole corpus).
    tgt_mean = meta["splits"][f"train.{a.tgt}"]["mean_pieces"]
    src_mean = meta["splits"][f"train.{a.src}"]["mean_pieces"]
    result: dict = {
        "benchmark": "peer_train_decode", "toolkit": TOOLKITS[tk]["name"],
        "toolkit_version": _version(TOOLKITS[tk]["dist"]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps": a.steps, "timed_steps": steps, "timed_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / steps, 3),
        "tgt_pieces_per_s": round(steps * 64 * tgt_mean / seconds, 1),
        "src_tgt_pieces_per_s": round(steps * 64 * (src_mean + tgt_mean) / seconds, 1),
        "sentences_per_s": round(steps * 64 / seconds, 2),
        "train_wall_seconds": round(wall, 1), "peak_rss_mib": round(rss),
        "rss_source": "GNU time -v" if Path("/usr/bin/time").exists() else "wait4 rusage",
        "threads": a.threads, "work_dir": str(work),
        "data": {"corpus": meta["corpus"], "spm": meta["spm"], "toolkit_vocab_pieces": meta["toolkit_vocab_pieces"],
                 "train_sentences": meta["splits"][f"train.{a.src}"]["sentences"],
                 "train_mean_pieces": {a.src: round(src_mean, 2), a.tgt: round(tgt_mean, 2)}},
        "decode": {},
    }

    # -- decoding test2016, then scoring the detokenized output against the raw reference
    if tk == "onmt":
        ckpt = work / f"model_step_{a.steps}.pt"
    else:
        ckpt = work / "model" / f"{a.steps}.ckpt"
    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    refs = (Path(a.data) / f"test2016.{a.tgt}").read_text(encoding="utf-8").splitlines()
    for beam in a.beams:
        label = "greedy" if beam == 1 else f"beam{beam}"
        if tk == "onmt":
            hyp_path = work / f"{label}.sp"
            cmd = [str(bindir / "onmt_translate"), "-model", str(ckpt), "-src", str(data / "sp" / f"test2016.{a.src}"),
                   "-output", str(hyp_path), "-beam_size", str(beam), "-batch_size", "64", "-batch_type", "sents",
                   "-max_length", str(a.max_len), "-length_penalty", "none", "-gpu", "-1", "-report_time",
                   "-seed", str(a.seed)]
        else:
            hyp_path = work / f"{label}.test"  # Joey appends the split name to --output-path
            cmd = [sys.executable, "-m", "joeynmt", "test",
                   write(f"{label}.yaml", joey_config(a, data, work, beam, ckpt)), "--output-path", str(work / label)]
        log(f"decoding test2016 ({label})")
        dwall, drss, _ = measured(cmd, work / f"{label}.log", env)
        found = GEN_SECONDS[tk].findall((work / f"{label}.log").read_text(errors="replace"))
        gen = float(found[-1]) if found else dwall
        hyp_pieces = [line.split() for line in hyp_path.read_text(encoding="utf-8").splitlines()]
        hyps = [sp.decode_pieces(h) for h in hyp_pieces]
        bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
        result["decode"][label] = {
            "sentences": len(hyps), "output_pieces": sum(map(len, hyp_pieces)),
            "generation_seconds": gen, "generation_seconds_source": "toolkit log" if found else "process wall",
            "sent_per_s": round(len(hyps) / gen, 2), "tgt_pieces_per_s": round(sum(map(len, hyp_pieces)) / gen, 1),
            "wall_seconds": round(dwall, 1), "sent_per_s_incl_startup": round(len(hyps) / dwall, 2),
            "peak_rss_mib": round(drss),
            "bleu": round(bleu.corpus_score(hyps, [refs]).score, 2), "bleu_signature": str(bleu.get_signature()),
            "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2), "chrf_signature": str(chrf.get_signature()),
        }
    result["machine"] = machine.describe("cpu")
    return result


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


# --------------------------------------------------------------------------- table

def table(files: list[str]) -> str:
    """Markdown rows from this harness's JSON, benchmarks/train_speed.py's JSON and
    the older peer harness's JSON (its numbers sit in train.*)."""
    rows = []
    for name in files:
        # the first JSON object: train_speed.py prints a summary line after it
        r, _ = json.JSONDecoder().raw_decode(Path(name).read_text().lstrip())
        if r.get("benchmark") == "train_speed":  # nmt's own benchmark
            rows.append((f"nmt ({r['steps']}, {r['precision']})", r["tgt_pieces_per_s"],
                         r["seconds_per_step"], r["peak_rss_mib"], False))
        elif r.get("benchmark") == "peer_train_decode":
            rows.append((f"{r['toolkit']} {r['toolkit_version']} ({r['steps']})", r["tgt_pieces_per_s"],
                         r["seconds_per_step"], r["peak_rss_mib"], r["toolkit"] == "OpenNMT-py"))
        else:
            t, tk = r["train"], {"onmt": "OpenNMT-py", "joey": "Joey NMT"}[r["toolkit"]]
            rows.append((f"{tk} {r['versions']['toolkit']} ({t['steps']})", t["tgt_tok_per_s"],
                         t["s_per_step"], t["peak_rss_mib"], tk == "OpenNMT-py"))
    base = next((row[1] for row in rows if row[4]), None)  # the first OpenNMT-py run
    out = ["| toolkit (steps) | target pieces/s | s/step | peak RSS (MiB) | vs OpenNMT-py |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for label, speed, step, rss, _ in rows:
        ratio = f"{speed / base:.2f}×" if base else ""
        out.append(f"| {label} | {speed:,.0f} | {step:.3f} | {rss:,.0f} | {ratio} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="create a toolkit's venv (again)")
    p.add_argument("toolkit", choices=TOOLKITS)
    p.add_argument("--torch-index-url", default=os.environ.get("NMT_PEERS_TORCH_INDEX"),
                   help="where to get torch, e.g. https://download.pytorch.org/whl/cpu")
    for tk, info in TOOLKITS.items():
        p = sub.add_parser(tk, help=f"train and decode with {info['name']}; print the JSON result")
        p.add_argument("--steps", type=int, default=200)
        p.add_argument("--log-every", type=int, help="progress lines; default: 25, or steps/4 for short runs")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--beams", type=lambda s: [int(b) for b in s.split(",")], default=[1, 5],
                       help="comma-separated beam sizes; 1 = greedy (default 1,5)")
        p.add_argument("--max-len", type=int, default=100, help="longest output in pieces")
        p.add_argument("--seed", type=int, default=1234)
        p.add_argument("--data", default=str(REPO / "data" / "multi30k"), help="raw {train,val,test2016}.{src,tgt}")
        p.add_argument("--src", default="en")
        p.add_argument("--tgt", default="de")
        p.add_argument("--vocab-size", type=int, default=8000)
        p.add_argument("--onmt-bucket-size", type=int, default=32768, help="OpenNMT-py examples per sorted pool")
        p.add_argument("--out", help="result file (default: $NMT_PEERS_HOME/results/TOOLKIT-STEPS-TIME.json)")
        p.add_argument("--torch-index-url", default=os.environ.get("NMT_PEERS_TORCH_INDEX"), help=argparse.SUPPRESS)
    p = sub.add_parser("table", help="markdown table of result files")
    p.add_argument("files", nargs="+")
    a = parser.parse_args()

    if a.command == "setup":
        setup(a.toolkit, a.torch_index_url)
    elif a.command == "table":
        print(table(a.files))
    else:
        venv = venv_dir(a.command)
        if Path(sys.prefix).resolve() != venv.resolve():
            # Everything below needs the toolkit's venv (sentencepiece, sacrebleu, torch):
            # set it up if needed, then run this same command again in it.
            if not is_ready(a.command):
                setup(a.command, a.torch_index_url)
            py = str(venv / "bin" / "python")
            os.execv(py, [py, str(Path(__file__).resolve())] + sys.argv[1:])
        a.log_every = a.log_every or min(25, max(1, a.steps // 4))
        result = bench(a.command, a)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(a.out) if a.out else HOME / "results" / f"{a.command}-{a.steps}-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
