"""Evaluation reports: a folder with report.md, a self-contained report.html, report.json and PNGs.

Systems' outputs on one test set: sacreBLEU scores with signatures, learning curves, scores by
source length, attention heatmaps, the best, worst and random sentences by chrF; with several
systems, paired bootstrap resampling against the first."""
from __future__ import annotations

import base64
import html
import json
import random
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.rundir import Metric, RunDir
from nmt.errors import DataError
from nmt.io import write_bytes, write_text

# Source-length buckets in words (upper bounds, inclusive); the last is open.
BUCKETS = (7, 10, 13, 17, 22)


@dataclass
class System:
    """One system's output on the test set, and what is known about how it was made."""
    name: str
    hypotheses: list[str]
    info: dict = field(default_factory=dict)  # checkpoint, step, decoding settings, timing
    run_dir: Path | None = None  # for learning curves
    attention: list[dict] = field(default_factory=list)  # {"source", "target", "weights"} each


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """BLEU, chrF and TER with their signatures, the sentence count and the length ratio."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    out = {"sentences": len(hypotheses)}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        result = metric.corpus_score(hypotheses, [references])
        out[name] = round(result.score, 2)
        out[f"{name}_signature"] = str(metric.get_signature())
        if name == "bleu":
            out["bleu_detail"] = str(result)
            out["length_ratio"] = round(result.sys_len / max(result.ref_len, 1), 4)
    return out


def length_buckets(sources: list[str], hypotheses: list[str], references: list[str]) -> list[dict]:
    """Corpus BLEU and chrF of the sentences in each source-length bucket."""
    rows = []
    for lower, upper in zip((1, *(bound + 1 for bound in BUCKETS)), (*BUCKETS, None)):
        index = [i for i, s in enumerate(sources)
                 if len(s.split()) >= lower and (upper is None or len(s.split()) <= upper)]
        if index:
            hyps, refs = [hypotheses[i] for i in index], [[references[i] for i in index]]
            rows.append({"bucket": f"{lower}-{upper}" if upper else f"{lower}+",
                         "sentences": len(index),
                         "bleu": round(sacrebleu.corpus_bleu(hyps, refs).score, 2),
                         "chrf": round(sacrebleu.corpus_chrf(hyps, refs).score, 2)})
    return rows


def example_sets(sources: list[str], hypotheses: list[str], references: list[str], n: int = 5,
                 seed: int = 1) -> dict:
    """The best, the worst and a random sample of sentences by sentence chrF."""
    chrf = [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hypotheses, references)]
    rows = [{"line": i + 1, "chrf": round(chrf[i], 2), "source": sources[i],
             "reference": references[i], "hypothesis": hypotheses[i]} for i in range(len(sources))]
    ranked = sorted(rows, key=lambda r: (-r["chrf"], r["line"]))
    sample = random.Random(seed).sample(rows, min(n, len(rows)))
    return {"best": ranked[:n], "worst": ranked[::-1][:n],
            "random": sorted(sample, key=lambda r: r["line"])}


def significance(systems: list[System], references: list[str], samples: int = 1000) -> dict:
    """Paired bootstrap resampling (sacreBLEU) of every system against the first."""
    from sacrebleu.significance import PairedTest

    metrics = {"bleu": BLEU(), "chrf": CHRF()}
    signatures, results = PairedTest([(s.name, s.hypotheses) for s in systems], metrics,
                                     [references], test_type="bs", n_samples=samples)()
    table = []
    for k, system in enumerate(systems):
        row = {"system": system.name}
        for metric in metrics:
            key = next(name for name in results if name.lower().startswith(metric))
            res = results[key][k]
            row[metric] = round(res.score, 2)
            row[f"{metric}_mean"] = round(float(res.mean), 2)
            row[f"{metric}_ci95"] = round(float(res.ci), 2)
            row[f"{metric}_p"] = None if res.p_value is None else round(float(res.p_value), 4)
            row[f"{metric}_significant"] = res.p_value is not None and res.p_value < 0.05
        table.append(row)
    return {"baseline": systems[0].name, "samples": samples, "rows": table,
            "signatures": {k: str(v) for k, v in signatures.items()}}


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def plot_curves(curves: dict, title: str) -> bytes:
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label, marker in ((Metric.TRAIN_LOSS, "training loss", None),
                               (Metric.VALID_LOSS, "validation loss", "o")):
        if key in curves:
            left.plot(*zip(*curves[key]), label=label, marker=marker)
    left.set(xlabel="step", ylabel="loss (nats/token)")
    left.legend()
    left.grid(alpha=0.3)
    if Metric.VALID_BLEU in curves:
        right.plot(*zip(*curves[Metric.VALID_BLEU]), color="tab:green", marker="o",
                   label="validation BLEU")
        right.set_ylabel("validation BLEU (greedy)")
    if Metric.TRAIN_LR in curves:
        twin = right.twinx()
        twin.plot(*zip(*curves[Metric.TRAIN_LR]), color="tab:gray", linestyle="--",
                  label="learning rate")
        twin.set_ylabel("learning rate")
    right.set_xlabel("step")
    right.grid(alpha=0.3)
    figure.suptitle(title)
    return _png(figure)


def plot_buckets(buckets: dict[str, list[dict]]) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np
    labels = [row["bucket"] for row in next(iter(buckets.values()))]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    width = 0.8 / len(buckets)
    for k, (name, rows) in enumerate(buckets.items()):
        x = np.arange(len(rows)) + k * width
        for axis, metric in zip(axes, ("bleu", "chrf")):
            axis.bar(x, [row[metric] for row in rows], width, label=name)
    for axis, metric in zip(axes, ("BLEU", "chrF")):
        axis.set_xticks(np.arange(len(labels)) + width * (len(buckets) - 1) / 2, labels)
        axis.set(xlabel="source length (words)", ylabel=metric)
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend()
    return _png(figure)


def plot_attention(example: dict) -> bytes:
    import matplotlib.pyplot as plt
    source, target = example["source"], example["target"]
    size = (max(4, 0.42 * len(source) + 1.5), max(3, 0.36 * len(target) + 1))
    figure, axis = plt.subplots(figsize=size)
    axis.imshow(example["weights"], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(len(source)), source, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(target)), target, fontsize=8)
    axis.set(xlabel="source pieces", ylabel="output pieces")
    return _png(figure)


def build_report(systems: list[System], sources: list[str], references: list[str], out_dir: Path,
                 title: str, bootstrap_samples: int = 1000) -> dict:
    """Compute every number, draw the images and write the report folder; return the JSON."""
    for system in systems:
        if len(system.hypotheses) != len(references):
            raise DataError(f"{system.name}: {len(system.hypotheses)} hypotheses but "
                            f"{len(references)} references")
    images: dict[str, bytes] = {}
    report = {"title": title, "sentences": len(references), "systems": []}
    buckets = {}
    for k, system in enumerate(systems):
        entry = {"name": system.name, **system.info,
                 "scores": corpus_scores(system.hypotheses, references),
                 "buckets": length_buckets(sources, system.hypotheses, references),
                 "examples": example_sets(sources, system.hypotheses, references)}
        buckets[system.name] = entry["buckets"]
        if system.run_dir is not None:
            run = RunDir(system.run_dir)
            entry["training"] = run.facts.training()  # {} before run.json
            entry["curves"] = run.metrics.curves()  # losses, learning rate and BLEU by step
            if entry["curves"]:
                name = f"curves_{k + 1}.png"
                images[name] = plot_curves(entry["curves"], system.name)
                entry["curves_image"] = name
        entry["attention"] = []
        for j, example in enumerate(system.attention):
            name = f"attention_{k + 1}_{j + 1}.png"
            images[name] = plot_attention(example)
            entry["attention"].append(dict(example, image=name))
        report["systems"].append(entry)
    images["buckets.png"] = plot_buckets(buckets)
    report["buckets_image"] = "buckets.png"
    if len(systems) > 1:
        report["significance"] = significance(systems, references, bootstrap_samples)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        write_bytes(out_dir / name, data)
    for system, entry in zip(systems, report["systems"]):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in system.name)
        write_text(out_dir / f"hypotheses.{safe}.txt", "".join(h + "\n" for h in system.hypotheses))
    write_text(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text(out_dir / "report.md", render_markdown(report))
    write_text(out_dir / "report.html", render_html(report, images))
    return report


# The report is one list of blocks (``report_blocks``), each rendered to Markdown and to HTML.

@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    def markdown(self) -> list[str]:
        return ["#" * self.level + " " + self.text, ""]

    def html(self, images: dict[str, bytes]) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str
    bold: str = ""  # written after ``text``, in bold, followed by ``after``
    after: str = ""

    def markdown(self) -> list[str]:
        bold = f"**{self.bold}**" if self.bold else ""
        return [self.text + bold + self.after, ""]

    def html(self, images: dict[str, bytes]) -> str:
        bold = f"<b>{html.escape(self.bold)}</b>" if self.bold else ""
        return f"<p>{html.escape(self.text)}{bold}{html.escape(self.after)}</p>"


@dataclass(frozen=True)
class Table:
    rows: list[list[str]]  # the first is the header

    def markdown(self) -> list[str]:
        clean = [[c.replace("|", "\\|") for c in row] for row in self.rows]
        return ["| " + " | ".join(clean[0]) + " |", "|" + " --- |" * len(clean[0])] + \
               ["| " + " | ".join(row) + " |" for row in clean[1:]] + [""]

    def html(self, images: dict[str, bytes]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.rows[1:])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class CodeList:
    items: list[tuple[str, str]]  # (label, code)

    def markdown(self) -> list[str]:
        return [f"- {label} `{code}`" for label, code in self.items] + [""]

    def html(self, images: dict[str, bytes]) -> str:
        return "<ul>" + "".join(f"<li>{label} <code>{html.escape(code)}</code></li>"
                                for label, code in self.items) + "</ul>"


@dataclass(frozen=True)
class Images:
    items: list[tuple[str, str]]  # (file name, alt text)
    row: bool = False  # side by side in HTML

    def markdown(self) -> list[str]:
        return [f"![{alt}]({name})" for name, alt in self.items] + [""]

    def html(self, images: dict[str, bytes]) -> str:  # inlined: the page opens from disk, alone
        tags = [f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(images[name]).decode("ascii")}">' for name, alt in self.items]
        return "\n".join(["<div class=row>", *tags, "</div>"] if self.row else tags)


def _score_rows(report: dict) -> list[list[str]]:
    rows = [["system", "BLEU", "chrF", "TER", "length ratio", "checkpoint", "decoding"]]
    for s in report["systems"]:
        sc = s["scores"]
        decoding = ", ".join(f"{k}={v}" for k, v in s.get("decoding", {}).items())
        rows.append([s["name"], f"{sc['bleu']:.2f}", f"{sc['chrf']:.2f}", f"{sc['ter']:.2f}",
                     f"{sc['length_ratio']:.3f}", str(s.get("checkpoint", "-")), decoding or "-"])
    return rows


def _training_rows(report: dict) -> list[list[str]]:
    rows = [["system", "steps", "minutes of training", "hardware", "torch"]]
    for s in report["systems"]:
        if s.get("training"):
            t = s["training"]
            rows.append([s["name"], f"{t['steps']:,}" if "steps" in t else "-",
                         f"{t['train_minutes']:.1f}" if "train_minutes" in t else "-",
                         t.get("hardware", "-"), t.get("torch", "-")])
    return rows


def _significance_rows(report: dict) -> list[list[str]]:
    rows = [["system", "BLEU (95% CI)", "p", "chrF (95% CI)", "p"]]
    for r in report["significance"]["rows"]:
        cells = [r["system"]]
        for m in ("bleu", "chrf"):
            p, star = r[f"{m}_p"], " *" if r[f"{m}_significant"] else ""
            cells += [f"{r[f'{m}_mean']:.2f} ± {r[f'{m}_ci95']:.2f}",
                      "baseline" if p is None else f"{p:.4f}{star}"]
        rows.append(cells)
    return rows


def _bucket_rows(report: dict) -> list[list[str]]:
    systems = report["systems"]
    rows = [["words", "sentences"] +
            [f"{s['name']} {m}" for s in systems for m in ("BLEU", "chrF")]]
    for i, bucket in enumerate(systems[0]["buckets"]):
        rows.append([bucket["bucket"], str(bucket["sentences"])] +
                    [f"{s['buckets'][i][m]:.2f}" for s in systems for m in ("bleu", "chrf")])
    return rows


def _system_blocks(s: dict) -> list:
    """A system's attention heatmaps and its example sentences."""
    blocks = []
    if s["attention"]:
        blocks += [Heading(f"Attention: {s['name']}"),
                   Images([(a["image"], f"attention {j + 1}")
                           for j, a in enumerate(s["attention"])], row=True)]
    for kind in ("best", "worst", "random"):
        blocks += [Heading(f"{kind.capitalize()} sentences by chrF: {s['name']}"),
                   Table([["line", "chrF", "source", "reference", "hypothesis"]] +
                         [[str(e["line"]), f"{e['chrf']:.1f}", e["source"], e["reference"],
                           e["hypothesis"]] for e in s["examples"][kind]])]
    return blocks


def report_blocks(report: dict) -> list:
    """The report's sections in order, as blocks (``Heading``, ``Paragraph``, ``Table``, ...)."""
    first = report["systems"][0]["scores"]
    blocks = [Heading(report["title"], level=1), Paragraph(f"{report['sentences']} sentences."),
              Heading("Scores"), Table(_score_rows(report)),
              CodeList([(m, first[f"{k}_signature"])
                        for m, k in (("BLEU", "bleu"), ("chrF", "chrf"), ("TER", "ter"))])]
    training = _training_rows(report)
    if len(training) > 1:  # a run's run.json said how it was trained
        blocks += [Heading("Training"), Table(training)]
    if "significance" in report:
        sig = report["significance"]
        blocks += [Heading("Significance"),
                   Paragraph(f"Paired bootstrap resampling ({sig['samples']} samples, "
                             "sacreBLEU) against ",
                             bold=sig["baseline"], after="; * = p < 0.05."),
                   Table(_significance_rows(report))]
    for s in report["systems"]:
        if s.get("curves_image"):
            blocks += [Heading(f"Learning curves: {s['name']}"),
                       Images([(s["curves_image"], "learning curves")])]
    blocks += [Heading("By source length"),
               Images([(report["buckets_image"], "BLEU and chrF by source length")]),
               Table(_bucket_rows(report))]
    for s in report["systems"]:
        blocks += _system_blocks(s)
    return blocks


def render_markdown(report: dict) -> str:
    return "\n".join(line for block in report_blocks(report) for line in block.markdown())


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
         "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}"
         ".row img{max-width:48%;margin-right:1%}code{font-size:12px}")


def render_html(report: dict, images: dict[str, bytes]) -> str:
    """One page with every image inlined as a data URI: it opens from disk, alone."""
    return ("<!DOCTYPE html><html><head><meta charset=utf-8>"
            f"<title>{html.escape(report['title'])}</title><style>{STYLE}</style></head><body>"
            + "\n".join(block.html(images) for block in report_blocks(report)) + "</body></html>\n")
