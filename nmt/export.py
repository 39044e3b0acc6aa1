"""Model folders (``nmt-export RUN OUT``, ``Translator.save_pretrained``): a trained model as
people share it. ``config.json`` (decode settings, vocabulary fingerprints), ``model.safetensors``
(plain tensors, no pickle), the sentencepiece model(s) and ``README.md``, a Hub model card.
Loading one runs no code from the folder, and it decodes exactly as the run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from nmt.checkpoint import Checkpoint, vocab_records
from nmt.directions import directions
from nmt.errors import CheckpointError, NmtError
from nmt.io import building_folder
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
    vocabs = {v.path.name: v for v in (run.src_vocab, run.tgt_vocab)}  # one when joint
    with building_folder(out) as part:
        (part / CONFIG).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        save_model(run.model, str(part / WEIGHTS))  # tied weights are written once
        (part / WEIGHTS).chmod(0o644)  # as the other files (safetensors writes it private)
        for name, vocab in vocabs.items():
            (part / name).write_bytes(vocab.model_bytes)
        (part / CARD).write_text(card, encoding="utf-8")
        if onnx:
            from nmt.onnx_model import export_onnx
            export_onnx(run.model, part)
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


def push(run: LoadedRun, repo_id: str, card: str, private: bool = False,
         token: str | None = None) -> str:
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
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder,
                                     commit_message="nmt model folder"))


def _test_report(run_dir: RunDir, run: LoadedRun) -> dict | None:
    """The newest test-set report in run.json by this checkpoint and step (not an ensemble)."""
    for folder, record in reversed(run_dir.facts.reports()):
        if (record.get("set"), record.get("checkpoint"), record.get("step")) != \
                ("test", run.checkpoint.stem, run.step) or record.get("ensemble"):
            continue
        try:
            return json.loads((folder / "report.json").read_text(encoding="utf-8"))["systems"][0]
        except (OSError, ValueError, KeyError, IndexError):
            continue  # removed or damaged since: an older one may do
    return None


@dataclass(frozen=True)
class _Facts:
    system: dict | None = None  # the test report's, or None
    seconds: float | None = None  # of training
    hardware: str | None = None
    recorded: bool = True  # False: the run predates run.json (and records neither of those)


def _run_facts(run: LoadedRun) -> _Facts:
    """What the run directory the checkpoint lies in says of it (nothing: a file elsewhere)."""
    run_dir = RunDir.of_checkpoint(run.checkpoint)
    if run_dir is None:
        return _Facts()
    seconds = Checkpoint.load(run.checkpoint, mmap=True).progress.train_seconds
    if not run_dir.facts.path.is_file():
        return _Facts(seconds=seconds, recorded=False)
    return _Facts(_test_report(run_dir, run), seconds, run_dir.facts.read().get("hardware"))


def _metadata(run: LoadedRun, system: dict | None, license_id: str) -> dict:
    """The card's YAML header: languages, license, tags and the test scores' model-index."""
    pairs = directions(run.cfg.data)
    meta = {"language": list(dict.fromkeys(lang for d in pairs for lang in (d.src, d.tgt))),
            "license": license_id, "library_name": "nmt", "pipeline_tag": "translation",
            "tags": ["translation", "lstm", "attention", "nmt"]}
    if system:
        src = "+".join(dict.fromkeys(d.src for d in pairs))
        tgt = "+".join(dict.fromkeys(d.tgt for d in pairs))
        test = Path(run.cfg.data.test).name or "test"
        meta["metrics"] = ["bleu", "chrf", "ter"]
        meta["model-index"] = [{"name": f"nmt {src}-{tgt}", "results": [{
            "task": {"type": "translation", "name": f"Translation {src}-{tgt}"},
            "dataset": {"name": test, "type": test},
            "metrics": [{"type": m, "value": system["scores"][m],
                         "name": m.upper() if m != "chrf" else "chrF"}
                        for m in ("bleu", "chrf", "ter")]}]}]
    return meta


def _architecture(run: LoadedRun) -> str:
    m, data = run.cfg.model, run.cfg.data
    return (f"An LSTM encoder–decoder with attention trained with "
            f"[nmt](https://pypi.org/project/nmt/): encoder {m.encoder_layers} × "
            f"{'bidirectional ' if m.bidirectional else ''}{m.cell.upper()} "
            f"{m.encoder_hidden_size}, decoder {m.decoder_layers} × {m.cell.upper()} "
            f"{m.decoder_hidden_size} ({m.decoder} decoder, {m.attention} attention"
            f"{', input feeding' if m.input_feeding else ''}), sentencepiece "
            f"{data.subword_type} {data.vocab_size:,} "
            f"({'joint' if data.joint_vocab else 'one per side'}); "
            f"{sum(p.numel() for p in run.model.parameters()):,} parameters.")


def _training(run: LoadedRun, facts: _Facts, multi30k: bool) -> list[str]:
    cfg = run.cfg
    hardware = facts.hardware or \
        ("not recorded" if facts.recorded else "not recorded (the run predates run.json)")
    source = cfg.train.init_from
    given = 'Multi30k task 1, 29,000 pairs' if multi30k else 'the training set the run was given'
    return [
        f"- Data: `{Path(cfg.data.train).name or '(not recorded)'}` ({given}).",
        f"- Steps: {run.step:,}"
        + (f", {facts.seconds / 60:.1f} minutes of training" if facts.seconds else "") + ".",
        *([f"- Fine-tuned from `{Path(source).name}` (weights sha256 `{cfg.train.init_sha256}`)."]
          if source else []),
        f"- Hardware: {hardware}."]


def _scores(run: LoadedRun, facts: _Facts) -> list[str]:
    system = facts.system
    if not system and not facts.recorded:
        return ["No test report is recorded (the run predates run.json; `nmt-evaluate RUN` "
                "records one).", ""]
    if not system:
        return ["No test report was found in the run directory (`nmt-evaluate RUN` writes one).",
                ""]
    scores = system["scores"]
    return [f"`{Path(run.cfg.data.test).name}`, {scores['sentences']:,} sentences, "
            f"beam {system['decoding']['beam_size']}, sacreBLEU:", "",
            "| metric | score | signature |", "| --- | ---: | --- |",
            *[f"| {name} | {scores[m]} | `{scores[m + '_signature']}` |"
              for m, name in (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER"))], ""]


def model_card(run: LoadedRun, license_id: str = "other") -> str:
    """README.md in the Hub's model-card format: YAML metadata, what the model is, its use,
    training, scores and limits."""
    cfg, facts = run.cfg, _run_facts(run)
    multi30k = cfg.data.train.rstrip("/").endswith("multi30k/train")
    body = [
        f"# nmt {', '.join(f'{d.src} → {d.tgt}' for d in directions(cfg.data))}", "",
        _architecture(run), "",
        "## Use", "", "```python", "from nmt import Translator",
        'Translator.from_pretrained("PATH_OR_REPO_ID").translate(["A sentence."], beam_size=5)',
        "```", "",
        "or `nmt-translate PATH_OR_FOLDER -i input.txt` (one sentence per line in, one out).", "",
        "## Training", "", *_training(run, facts, multi30k), "",
        "## Scores", "", *_scores(run, facts),
        "## Limitations", "",
        "- Trained on "
        f"{'image descriptions (Multi30k): short, literal sentences' if multi30k else 'one corpus'}"
        "; expect weaker output on other domains and on sentences much longer than the training "
        f"data's ({cfg.data.max_len} pieces at most).",
        "- Greedy or beam search; no document context.",
        "- The training data's terms apply: " + (
            "Multi30k is for non-commercial research and educational use." if multi30k
            else "nmt does not record them; the publisher of this model states them."), ""]
    meta = yaml.safe_dump(_metadata(run, facts.system, license_id), sort_keys=False,
                          allow_unicode=True)
    return "---\n" + meta + "---\n\n" + "\n".join(body)


def card_of(run: LoadedRun, license_id: str = "other") -> str:
    """The folder's own card when ``run`` was loaded from a model folder, else a new one."""
    card = run.checkpoint.with_name(CARD)
    if run.checkpoint.name == WEIGHTS and card.is_file():
        return card.read_text(encoding="utf-8")
    return model_card(run, license_id)

