"""Scoring with sacreBLEU and evaluation reports (JSON + Markdown)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import sacrebleu

from nmt.errors import DataError
from nmt.io import atomic_write_text, read_lines


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF of detokenized hypotheses against raw references."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(b.score, 2), "bleu_signature": str(bleu.get_signature()),
        "chrf": round(c.score, 2), "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(b), "length_ratio": round(b.sys_len / max(b.ref_len, 1), 4),
        "sentences": len(hypotheses),
    }


def write_report(out_dir: Path, report: dict, sources: list[str], references: list[str],
                 hypotheses: list[str], examples: int = 5) -> None:
    """Write hypotheses.txt, report.json and report.md into ``out_dir`` (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(report, examples=[
        {"source": s, "reference": r, "hypothesis": h}
        for s, r, h in list(zip(sources, references, hypotheses))[:examples]])
    atomic_write_text(out_dir / "hypotheses.txt", "".join(h + "\n" for h in hypotheses))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    s = report["scores"]
    lines = [f"# Evaluation: {report['name']}", "",
             f"- BLEU **{s['bleu']}** `{s['bleu_signature']}`",
             f"- chrF **{s['chrf']}** `{s['chrf_signature']}`",
             f"- {s['sentences']} sentences, length ratio {s['length_ratio']}",
             f"- source: `{report['source_file']}`, reference: `{report['reference_file']}`",
             f"- checkpoint: `{report['checkpoint']}` (step {report.get('step')})",
             f"- decoding: {', '.join(f'{k}={v}' for k, v in report['decoding'].items())}",
             f"- decoding time: {report['decode_seconds']} s",
             "", "## Examples", ""]
    for ex in report["examples"]:
        lines += [f"- source: {ex['source']}", f"  - reference: {ex['reference']}",
                  f"  - hypothesis: {ex['hypothesis']}"]
    lines += ["", "## Config", "", "```yaml", report["config_yaml"].rstrip(), "```", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))


def evaluate_run(run_dir: str | Path, split: str = "test", src_file: str | None = None,
                 ref_file: str | None = None, checkpoint: str = "best", out_dir: str | Path | None = None,
                 device: str = "cpu", int8: bool = False, **decode_overrides) -> dict:
    """Translate a test set with a run's checkpoint, score it and write a report.

    The test set is the config's ``data.<split>`` or, when given, the files
    ``src_file`` (raw source) and ``ref_file`` (raw reference).
    """
    import yaml

    from nmt.data import load_split
    from nmt.translate import Translator

    translator = Translator.load(run_dir, checkpoint, device, int8)
    cfg = translator.run.cfg
    if src_file or ref_file:
        if not (src_file and ref_file):
            raise DataError("give both a source file and a reference file")
        sources, references = read_lines(src_file), read_lines(ref_file)
        if len(sources) != len(references):
            raise DataError(f"{src_file} has {len(sources)} lines but {ref_file} has {len(references)}")
        name = Path(src_file).name
    else:
        prefix = getattr(cfg.data, split, None)
        if not prefix:
            raise DataError(f"data.{split}: the run's config names no {split} set")
        sources, references = load_split(cfg.data, prefix, split)
        src_file = f"{prefix}.{cfg.data.src_lang}" if cfg.data.loader == "text" else prefix
        ref_file = f"{prefix}.{cfg.data.tgt_lang}" if cfg.data.loader == "text" else prefix
        name = split
    decode = translator.settings(**decode_overrides)
    start = time.perf_counter()
    hypotheses = translator.translate(sources, beam_size=decode.beam_size, batch_size=decode.batch_size,
                                      length_penalty=decode.length_penalty,
                                      max_length_ratio=decode.max_length_ratio)
    seconds = time.perf_counter() - start
    report = {
        "name": f"{name}-{translator.run.checkpoint.stem}-beam{decode.beam_size}{'-int8' if int8 else ''}",
        "scores": score(hypotheses, references),
        "source_file": str(src_file), "reference_file": str(ref_file),
        "checkpoint": str(translator.run.checkpoint), "step": translator.run.step,
        "decoding": dict({k: v for k, v in asdict(decode).items() if k != "n_best"}, int8=int8),
        "decode_seconds": round(seconds, 2),
        "sentences_per_second": round(len(sources) / max(seconds, 1e-9), 1),
        "config_yaml": yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True),
    }
    out = Path(out_dir) if out_dir else Path(run_dir) / "reports" / report["name"]
    write_report(out, report, sources, references, hypotheses)
    report["report_dir"] = str(out)
    return report


def format_scores(report: dict) -> str:
    s = report["scores"]
    return (f"BLEU {s['bleu']:.2f}  {s['bleu_signature']}\n"
            f"chrF {s['chrf']:.2f}  {s['chrf_signature']}")
