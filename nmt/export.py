"""Model folders: a trained model as people share it, loaded with nothing executed.

A model folder (``nmt-export RUN OUT``, ``Translator.save_pretrained``) holds
``config.json`` (the model, data and decode settings decoding needs, and the
vocabularies' fingerprints), ``model.safetensors`` (the decoding weights: plain
tensors, no pickle), the sentencepiece model(s) and ``README.md``, a model card in
the Hugging Face Hub's format. Loading one reads JSON, tensors and sentencepiece
protobufs: no code in the folder runs. A loaded folder decodes exactly as the run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml

from nmt.checkpoint import Checkpoint, vocab_records
from nmt.directions import directions
from nmt.errors import CheckpointError, NmtError
from nmt.loading import CONFIG, FORMAT, VERSION, WEIGHTS, LoadedRun
from nmt.rundir import RunDir

CARD = "README.md"
PATH_KEYS = ("train", "valid", "test")  # the data section's paths: only their last part is shared


def save_folder(run: LoadedRun, out: str | Path, card: str, onnx: bool = False) -> Path:
    """Write ``run`` as a model folder ``out`` (new, or an empty folder), all files or none;
    ``onnx``: with the encoder and decoder step as ONNX graphs (``nmt.onnx_model``)."""
    from safetensors.torch import save_model

    out = Path(out)
    if onnx:  # a missing extra is said before anything is written
        from nmt.onnx_model import _needs
        _needs("onnx")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NmtError(f"{out}: already exists and is not an empty folder; choose a new one")
    named = lambda entry: {k: Path(entry[k]).name for k in PATH_KEYS}  # noqa: E731
    data = run.cfg.to_dict()["data"]
    data = dict(data, cache_dir="", **named(data),
                directions=[dict(entry, **named(entry)) for entry in data["directions"]])
    cfg = dict(run.cfg.to_dict(), data=data)
    cfg.pop("train")
    record = {"format": FORMAT, "version": VERSION, "config": cfg, "step": run.step,
              "vocab": vocab_records(run.src_vocab, run.tgt_vocab)}
    part = out.with_name(f".{out.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        (part / CONFIG).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        save_model(run.model, str(part / WEIGHTS))  # tied weights are written once
        (part / WEIGHTS).chmod(0o644)  # as the other files (safetensors writes it private)
        for vocab in {run.src_vocab.path.name: run.src_vocab, run.tgt_vocab.path.name: run.tgt_vocab}.values():
            (part / vocab.path.name).write_bytes(vocab.model_bytes)
        (part / CARD).write_text(card, encoding="utf-8")
        if onnx:
            from nmt.onnx_model import export_onnx
            export_onnx(run.model, part)
        if out.exists():
            out.rmdir()
        part.rename(out)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return out


def fetch(name: str | Path) -> Path:
    """A model folder on this machine, or a Hugging Face Hub repo id downloaded to its cache."""
    if Path(name).is_dir():
        return Path(name)
    if Path(name).exists() or str(name).count("/") != 1 or str(name).startswith((".", "/")):
        raise CheckpointError(f"{name}: not a model folder (nor a Hub repo id, OWNER/NAME)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NmtError(f"{name}: not a folder here; fetching it from the Hugging Face Hub needs "
                       "huggingface_hub: pip install 'nmt[hub]'") from None
    return Path(snapshot_download(str(name)))


def push(run: LoadedRun, repo_id: str, card: str, private: bool = False, token: str | None = None) -> str:
    """Save ``run`` as a model folder and upload it to the Hub repo ``repo_id`` (made if new)."""
    import tempfile
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise NmtError("push_to_hub needs huggingface_hub: pip install 'nmt[hub]'") from None
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_folder(run, Path(tmp) / "model", card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="nmt model folder"))


def _test_report(run_dir: RunDir, run: LoadedRun) -> dict | None:
    """The newest test report of this checkpoint at this step in the run directory."""
    found = []
    for path in run_dir.reports.glob(f"test-{run.checkpoint.stem}-beam*/report.json"):
        try:
            system = json.loads(path.read_text(encoding="utf-8"))["systems"][0]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if system.get("step") == run.step:
            found.append((path.stat().st_mtime, system))
    return max(found, key=lambda item: item[0])[1] if found else None


def _run_facts(run: LoadedRun) -> tuple[dict | None, float | None, str | None]:
    """(test report, training seconds, hardware) from the run directory the checkpoint lies in."""
    run_dir = RunDir.of_checkpoint(run.checkpoint)
    if run_dir is None:
        return None, None, None
    seconds = Checkpoint.load(run.checkpoint, mmap=True).progress.train_seconds
    log = run_dir.train_log
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    lines = re.findall(r"parameters on (.+?); run directory", text)
    return _test_report(run_dir, run), seconds, lines[-1] if lines else None


def model_card(run: LoadedRun, license_id: str = "other") -> str:
    """README.md in the Hub's model-card format: YAML metadata, then what the model is,
    how it was trained and scored, the two lines that use it, and its limits."""
    cfg = run.cfg
    pairs = directions(cfg.data)
    src = "+".join(dict.fromkeys(d.src for d in pairs))
    tgt = "+".join(dict.fromkeys(d.tgt for d in pairs))
    system, seconds, hardware = _run_facts(run)
    languages = list(dict.fromkeys(lang for d in pairs for lang in (d.src, d.tgt)))
    meta = {"language": languages, "license": license_id, "library_name": "nmt", "pipeline_tag": "translation",
            "tags": ["translation", "lstm", "attention", "nmt"]}
    rows = []
    if system:
        scores = system["scores"]
        meta["metrics"] = ["bleu", "chrf", "ter"]
        meta["model-index"] = [{"name": f"nmt {src}-{tgt}", "results": [{
            "task": {"type": "translation", "name": f"Translation {src}-{tgt}"},
            "dataset": {"name": Path(cfg.data.test).name or "test", "type": Path(cfg.data.test).name or "test"},
            "metrics": [{"type": m, "value": scores[m], "name": m.upper() if m != "chrf" else "chrF"}
                        for m in ("bleu", "chrf", "ter")]}]}]
        rows = [f"| {name} | {scores[m]} | `{scores[m + '_signature']}` |"
                for m, name in (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER"))]
    m = cfg.model
    multi30k = cfg.data.train.rstrip("/").endswith("multi30k/train")
    body = [
        f"# nmt {', '.join(f'{d.src} → {d.tgt}' for d in pairs)}", "",
        f"An LSTM encoder–decoder with attention trained with [nmt](https://pypi.org/project/nmt/): "
        f"encoder {m.encoder_layers} × {'bidirectional ' if m.bidirectional else ''}{m.cell.upper()} "
        f"{m.encoder_hidden_size}, decoder {m.decoder_layers} × {m.cell.upper()} {m.decoder_hidden_size} "
        f"({m.decoder} decoder, {m.attention} attention{', input feeding' if m.input_feeding else ''}), "
        f"sentencepiece {cfg.data.subword_type} {cfg.data.vocab_size:,} "
        f"({'joint' if cfg.data.joint_vocab else 'one per side'}); "
        f"{sum(p.numel() for p in run.model.parameters()):,} parameters.", "",
        "## Use", "", "```python", "from nmt import Translator",
        'Translator.from_pretrained("PATH_OR_REPO_ID").translate(["A sentence."], beam_size=5)', "```", "",
        "or `nmt-translate PATH_OR_FOLDER -i input.txt` (one sentence per line in, one out).", "",
        "## Training", "",
        f"- Data: `{Path(cfg.data.train).name or '(not recorded)'}` "
        f"({'Multi30k task 1, 29,000 pairs' if multi30k else 'the training set the run was given'}).",
        f"- Steps: {run.step:,}" + (f", {seconds / 60:.1f} minutes of training" if seconds else "") + ".",
        *([f"- Fine-tuned from `{Path(cfg.train.init_from).name}` (weights sha256 `{cfg.train.init_sha256}`)."]
          if cfg.train.init_from else []),
        f"- Hardware: {hardware or 'not recorded'}.", "",
        "## Scores", ""]
    if rows:
        body += [f"`{Path(cfg.data.test).name}`, {system['scores']['sentences']:,} sentences, "
                 f"beam {system['decoding']['beam_size']}, sacreBLEU:", "",
                 "| metric | score | signature |", "| --- | ---: | --- |", *rows, ""]
    else:
        body += ["No test report was found in the run directory (`nmt-evaluate RUN` writes one).", ""]
    body += ["## Limitations", "",
             f"- Trained on {'image descriptions (Multi30k): short, literal sentences' if multi30k else 'one corpus'}; "
             "expect weaker output on other domains and on sentences much longer than the training "
             f"data's ({cfg.data.max_len} pieces at most).",
             "- Greedy or beam search; no document context.",
             "- The training data's terms apply: " + (
                 "Multi30k is for non-commercial research and educational use." if multi30k
                 else "nmt does not record them; the publisher of this model states them."), ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def card_of(run: LoadedRun, license_id: str = "other") -> str:
    """The folder's own card when ``run`` was loaded from a model folder, else a new one."""
    card = run.checkpoint.with_name(CARD)
    if run.checkpoint.name == WEIGHTS and card.is_file():
        return card.read_text(encoding="utf-8")
    return model_card(run, license_id)

