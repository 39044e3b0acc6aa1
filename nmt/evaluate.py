"""Evaluation: translate a test set with one or more runs (or take hypothesis files) and report."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from nmt.errors import ConfigError, DataError
from nmt.io import read_lines
from nmt.loading import is_model_folder
from nmt.report import System, build_report
from nmt.rundir import RunDir

ATTENTION_EXAMPLES = 4  # heatmaps per system: the first test sentences of 6-14 words (or any)


def test_set(cfg, split: str, src_file: str | None, ref_file: str | None, target_lang: str = ""
             ) -> tuple[list[str], list[str], str]:
    """(sources, references, name) from two files or from the config's ``data.<split>`` (of the
    direction into ``target_lang`` when the run has several, ``nmt.directions``)."""
    from nmt.data import load_split
    from nmt.directions import for_target, label, side_config

    if src_file or ref_file:
        if not (src_file and ref_file):
            raise DataError("give both a source file and a reference file")
        sources, references = read_lines(src_file), read_lines(ref_file)
        if len(sources) != len(references):
            raise DataError(f"{src_file} has {len(sources)} lines but {ref_file} has "
                            f"{len(references)}")
        if not sources:
            raise DataError(f"{src_file}: the test set is empty")
        return sources, references, Path(src_file).name
    direction = for_target(cfg.data, target_lang or cfg.decode.target_lang, "--target-lang")
    prefix = getattr(direction, split, None)
    if not prefix:
        raise DataError(f"data.{split}: the run's config names no {split} set")
    sources, references = load_split(side_config(cfg.data, direction), prefix, split)
    return sources, references, split + (f"-{label(direction)}" if cfg.data.directions else "")


def run_system(run_dir: str | Path, sources: list[str], checkpoint: str = "best",
               device: str = "cpu", int8: bool = False, ensemble: list[str] = (),
               backend: str = "torch", **decode_overrides) -> System:
    """Translate ``sources`` with a run, and a few again keeping the attention for heatmaps."""
    from nmt.translate import Translator

    translator = Translator.load(run_dir, checkpoint, device, int8, ensemble, backend)
    decode = translator.settings(**decode_overrides)
    if decode.samples:
        raise ConfigError("decode.samples: a report scores search output; draw samples with "
                          "nmt-translate")
    search = {k: v for k, v in asdict(decode).items() if k != "n_best"}
    start = time.perf_counter()
    hypotheses = translator.translate(sources, **search)
    seconds = time.perf_counter() - start
    picks = ([s for s in sources if 6 <= len(s.split()) <= 14] or sources)[:ATTENTION_EXAMPLES]
    kept = translator.hypotheses(picks, keep_attention=True, **asdict(decode))
    attention = [translator.alignment(sentence, hyps[0], target_lang=decode.target_lang)
                 for sentence, hyps in zip(picks, kept)]
    run, int8 = translator.run, translator.int8  # int8 is declined on CPUs without fast int8
    name = f"{Path(run_dir).name}:{run.checkpoint.stem}" + (":int8" if int8 else "") + \
        "".join(f"+{member}" for member in ensemble)
    info = {"checkpoint": str(run.checkpoint), "step": run.step,
            "decode_seconds": round(seconds, 2),
            "sentences_per_second": round(len(sources) / max(seconds, 1e-9), 1),
            "decoding": dict(search, int8=int8)}
    return System(name, hypotheses, info, Path(run_dir), attention)


def evaluate(run_dirs: list[str] = (), hyp_files: list[str] = (), split: str = "test",
             src_file: str | None = None, ref_file: str | None = None, checkpoint: str = "best",
             out_dir: str | Path | None = None, device: str = "cpu", int8: bool = False,
             ensemble: list[str] = (), backend: str = "torch", **decode_overrides) -> dict:
    """Report on runs (translated here) and/or hypothesis files, on ``src_file``/``ref_file`` or
    the first run's ``data.<split>``. Without ``out_dir`` a single run reports into
    ``<run_dir>/reports/<set>-<checkpoint>-beam<k>`` (recorded in its run.json), a single file
    into ``<file>.report``."""
    if not run_dirs and not hyp_files:
        raise DataError("nothing to evaluate: give a run directory or a hypothesis file")
    if ensemble and len(run_dirs) != 1:
        raise DataError("--ensemble joins one run directory's model: give exactly one RUN_DIR")
    folder = bool(run_dirs) and is_model_folder(run_dirs[0])
    if folder and not (src_file and ref_file and out_dir):
        raise DataError(f"{run_dirs[0]} is a model folder, which names no data sets and is not "
                        "written to: give --src, --ref and --out")
    sources, references, set_name = _test_data(run_dirs, folder, split, src_file, ref_file,
                                               decode_overrides.get("target_lang") or "")
    systems = [run_system(r, sources, checkpoint, device, int8, ensemble, backend,
                          **decode_overrides) for r in run_dirs]
    for path in hyp_files:
        hypotheses = read_lines(path)
        if len(hypotheses) != len(references):
            raise DataError(f"{path} has {len(hypotheses)} lines but the references have "
                            f"{len(references)}")
        systems.append(System(Path(path).name, hypotheses, {"file": str(path)}))
    info = systems[0].info
    if out_dir is None and len(systems) == 1 and hyp_files:
        out_dir = Path(f"{hyp_files[0]}.report")
    elif out_dir is None:
        if len(systems) > 1:
            raise DataError("several systems: say where the report goes (--out)")
        out_dir = (RunDir(run_dirs[0]).reports / f"{set_name}-{Path(info['checkpoint']).stem}-beam"
                   f"{info['decoding']['beam_size']}{'-int8' if int8 else ''}"
                   f"{f'-ensemble{len(ensemble) + 1}' if ensemble else ''}")
    title = f"Evaluation on {set_name}: " + ", ".join(s.name for s in systems)
    report = build_report(systems, sources, references, Path(out_dir), title)
    report["report_dir"] = str(out_dir)
    if len(systems) == 1 and run_dirs and not folder:  # where nmt-export finds it for the card
        RunDir(run_dirs[0]).facts.add_report(
            Path(out_dir), set=set_name, checkpoint=Path(info["checkpoint"]).stem,
            step=info["step"], beam_size=info["decoding"]["beam_size"],
            int8=info["decoding"]["int8"], ensemble=len(ensemble))
    return report


def _test_data(run_dirs: list[str], folder: bool, split: str, src_file: str | None,
               ref_file: str | None, target_lang: str) -> tuple[list[str], list[str], str]:
    """(sources, references, set name): the files, or the first run's ``data.<split>``."""
    from nmt.config import load_config

    if folder:
        return test_set(None, split, src_file, ref_file)
    if run_dirs:
        config = RunDir(run_dirs[0]).config
        if not config.is_file():
            raise DataError(f"{config}: not found; is {run_dirs[0]} a run directory?")
        return test_set(load_config(config), split, src_file, ref_file, target_lang)
    if not ref_file:
        raise DataError("hypothesis files need a reference file (--ref)")
    references = read_lines(ref_file)
    sources = read_lines(src_file) if src_file else references  # buckets by reference length
    if len(sources) != len(references):
        raise DataError(f"{src_file} has {len(sources)} lines but {ref_file} has {len(references)}")
    return sources, references, Path(ref_file).name


def format_scores(report: dict) -> str:
    """BLEU, chrF and TER of each system, with signatures, for the console."""
    lines = []
    for system in report["systems"]:
        s = system["scores"]
        prefix = f"{system['name']}: " if len(report["systems"]) > 1 else ""
        lines += [f"{prefix}{name:<4} {s[m]:.2f}  {s[m + '_signature']}"  # TER padded to 4
                  for m, name in (("bleu", "BLEU"), ("chrf", "chrF"), ("ter", "TER"))]
    for row in report.get("significance", {}).get("rows", [])[1:]:
        lines.append(f"{row['system']} vs {report['significance']['baseline']}: BLEU p = "
                     f"{row['bleu_p']}{' (significant)' if row['bleu_significant'] else ''}")
    return "\n".join(lines)
