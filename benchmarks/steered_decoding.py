"""Steered decoding on a test set: terminology constraints, target prefixes and markup kept.

    python benchmarks/steered_decoding.py RUN_DIR [--test data/multi30k/test2016] [--src de --tgt en]
        [--batch-size 64] [--beam-size 5] [--repeats 3] [--seed 1] [--out benchmarks/results/steer]
        [--engine torch|int8|onnx] [--parts terminology,prefixes,markup]

- Terminology: for each sentence, 1 or 2 reference words or two-word phrases (no
  punctuation) that the unconstrained beam output lacks, drawn with ``--seed`` and written
  to ``OUT/constraints.tsv`` (one line per sentence, phrases tab-separated: the file
  ``nmt-translate --constraints`` reads). Reports constraint satisfaction (a phrase is met
  when its text appears in the output; ``whole_words``: as whole words, "dog" not met by
  "dogs"), BLEU and chrF with and without them, and decoding speed at ``--beam-size`` and
  ``--batch-size`` as a ratio to unconstrained (median of ``--repeats`` timed passes each,
  after one untimed pass of each).
- Prefixes: the first 25 % / 50 % of each reference's words as the prefix: BLEU of the whole
  output, and the accuracy of the next 1 and 3 words after the prefix (position by position).
- Markup: a copy of the source with tags and placeholders put in at word boundaries (a
  ``<b>`` pair around 1-3 words, sometimes an ``<i>`` pair nested inside it, and a
  placeholder ``{1}``, ``%s`` or ``<x id="1"/>``), written to ``OUT/markup.SRC``; reports
  the share of outputs that hold every item exactly once and keep tags balanced, and BLEU of
  the outputs with their markup taken out against BLEU of the plain source's outputs.

Prints one JSON object (with benchmarks/machine.py's description) and a summary.
"""
import argparse
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sacrebleu  # noqa: E402
import torch  # noqa: E402

from machine import describe  # noqa: E402
from nmt import markup  # noqa: E402
from nmt.io import read_lines  # noqa: E402
from nmt.translate import Translator  # noqa: E402

WORD = re.compile(r"^\w[\w'-]*$")


def scores(hyps: list[str], refs: list[str]) -> dict:
    return {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)}


def timed(run, repeats: int) -> tuple[list, float]:
    """One untimed pass, then the median seconds of ``repeats`` timed ones (and the output);
    no repeats: the pass alone, untimed (None)."""
    out = run()
    if not repeats:
        return out, None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        again = run()
        times.append(time.perf_counter() - start)
        assert again == out, "a pass gave other translations"
    return out, statistics.median(times)


def has_words(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def draw_constraints(refs: list[str], hyps: list[str], rng: random.Random) -> list[list[str]]:
    """1 or 2 reference words or two-word phrases per sentence that the output lacks."""
    out = []
    for ref, hyp in zip(refs, hyps):
        words = [w for w in ref.split() if WORD.match(w)]
        units = [w for w in words if len(w) > 2] + [f"{a} {b}" for a, b in zip(ref.split(), ref.split()[1:])
                                                    if WORD.match(a) and WORD.match(b)]
        missing = sorted({u for u in units if not has_words(hyp, u)})
        rng.shuffle(missing)
        chosen: list[str] = []
        for unit in missing:  # phrases that do not overlap one another
            if len(chosen) < rng.choice([1, 2]) and not any(set(unit.split()) & set(c.split()) for c in chosen):
                chosen.append(unit)
        out.append(chosen)
    return out


def with_markup(line: str, rng: random.Random) -> str:
    words = line.split()
    if not words:
        return line
    a = rng.randrange(len(words))
    b = min(len(words), a + rng.randint(1, 3))
    inner = words[a:b]
    if len(inner) > 1 and rng.random() < 0.3:
        inner = [f"<i>{inner[0]}</i>"] + inner[1:]
    words[a:b] = [f"<b>{' '.join(inner)}</b>"]
    if rng.random() < 0.7:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["{1}", "%s", '<x id="1"/>']))
    return " ".join(words)


def prefix_rows(translator, src, refs, options, repeats) -> list[dict]:
    rows = []
    for share in (0.25, 0.5):
        cut = [int(len(ref.split()) * share) for ref in refs]
        prefixes = [" ".join(ref.split()[:n]) for ref, n in zip(refs, cut)]
        hyps, _ = timed(lambda: translator.translate(src, prefix=prefixes, **options), repeats)
        next1, next3 = [], []
        for hyp, ref, n in zip(hyps, refs, cut):
            h, r = hyp.split()[n:], ref.split()[n:]
            if r:
                next1.append(h[:1] == r[:1])
                next3.extend(i < len(h) and h[i] == r[i] for i in range(min(3, len(r))))
        rows.append({"prefix_share": share, **scores(hyps, refs),
                     "next_word_accuracy": round(statistics.mean(next1), 4),
                     "next_3_words_accuracy": round(statistics.mean(next3), 4)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--test", default=str(ROOT / "data/multi30k/test2016"))
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", choices=("torch", "int8", "onnx"), default="torch")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/steer"))
    p.add_argument("--parts", default="terminology,prefixes,markup")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    translator = Translator.load(args.run_dir, int8=args.engine == "int8", backend=args.engine
                                 if args.engine == "onnx" else "torch")
    src = read_lines(f"{args.test}.{args.src}")
    refs = read_lines(f"{args.test}.{args.tgt}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(beam_size=args.beam_size, batch_size=args.batch_size)

    plain, plain_s = timed(lambda: translator.translate(src, **options), args.repeats if "terminology" in parts else 0)
    result = {"run_dir": args.run_dir, "engine": args.engine, "test": args.test, "seed": args.seed,
              "beam_size": args.beam_size, "batch_size": args.batch_size, "repeats": args.repeats}
    if "terminology" in parts:
        result["terminology"] = terminology(translator, src, refs, plain, plain_s, options, args, out)
    if "prefixes" in parts:
        result["prefixes"] = prefix_rows(translator, src, refs, options, 0)
    if "markup" in parts:
        result["markup"] = markup_row(translator, src, refs, plain, options, args, out)
    result["machine"] = describe(torch.device("cpu"))
    print(json.dumps(result, indent=2))
    report(result)


def terminology(translator, src, refs, plain, plain_s, options, args, out) -> dict:
    constraints = draw_constraints(refs, plain, random.Random(args.seed))
    (out / "constraints.tsv").write_text("".join("\t".join(c) + "\n" for c in constraints), encoding="utf-8")
    steered, steered_s = timed(lambda: translator.translate(src, constraints=constraints, **options),
                               args.repeats)
    for name, lines in (("unconstrained", plain), ("constrained", steered)):
        (out / f"{name}.{args.tgt}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    phrases = [(hyp, c) for hyp, cs in zip(steered, constraints) for c in cs]
    met = sum(c in hyp for hyp, c in phrases)
    words = sum(has_words(hyp, c) for hyp, c in phrases)
    return {"sentences_constrained": sum(map(bool, constraints)), "phrases": len(phrases),
            "phrases_met": met, "satisfaction": round(met / max(1, len(phrases)), 4),
            "satisfaction_whole_words": round(words / max(1, len(phrases)), 4),
            "unconstrained": scores(plain, refs), "constrained": scores(steered, refs),
            "seconds_unconstrained": round(plain_s, 2), "seconds_constrained": round(steered_s, 2),
            "speed_ratio": round(plain_s / steered_s, 3)}


def markup_row(translator, src, refs, plain, options, args, out) -> dict:
    rng = random.Random(args.seed)
    marked = [with_markup(line, rng) for line in src]
    (out / f"markup.{args.src}").write_text("".join(m + "\n" for m in marked), encoding="utf-8")
    kept = translator.translate(marked, markup="keep", **options)
    (out / f"markup.{args.tgt}").write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    whole = [Counter(markup.items_of(o)) == Counter(markup.items_of(m)) for o, m in zip(kept, marked)]
    stripped = [" ".join(markup.MARKUP.sub(" ", o).split()) for o in kept]
    items = sum(len(markup.items_of(m)) for m in marked)
    marks = {"sentences": len(marked), "items": items,
             "items_kept": sum(min(Counter(markup.items_of(o))[k], v) for o, m in zip(kept, marked)
                               for k, v in Counter(markup.items_of(m)).items()),
             "sentences_with_every_item_once": sum(whole),
             "sentences_balanced": sum(markup.balanced(o) for o in kept),
             "plain": scores(plain, refs), "stripped": scores(stripped, refs)}
    marks["bleu_difference"] = round(marks["stripped"]["bleu"] - marks["plain"]["bleu"], 2)
    return marks


def report(result: dict) -> None:
    """One line per part on stderr."""
    if "terminology" in result:
        t = result["terminology"]
        print(f"terminology: {t['phrases_met']}/{t['phrases']} phrases met; BLEU {t['unconstrained']['bleu']} -> "
              f"{t['constrained']['bleu']}, chrF {t['unconstrained']['chrf']} -> {t['constrained']['chrf']}; "
              f"speed {t['speed_ratio']}x unconstrained", file=sys.stderr)
    for row in result.get("prefixes", []):
        print(f"prefix {row['prefix_share']:.0%}: BLEU {row['bleu']}, next word {row['next_word_accuracy']:.1%}, "
              f"next 3 words {row['next_3_words_accuracy']:.1%}", file=sys.stderr)
    if "markup" in result:
        m = result["markup"]
        print(f"markup: {m['items_kept']}/{m['items']} items kept, {m['sentences_with_every_item_once']}/"
              f"{m['sentences']} sentences whole, {m['sentences_balanced']} balanced; BLEU {m['plain']['bleu']} "
              f"plain, {m['stripped']['bleu']} markup stripped", file=sys.stderr)


if __name__ == "__main__":
    main()
