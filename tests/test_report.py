"""Evaluation reports: numbers against sacreBLEU, valid PNGs, a self-contained HTML page."""
import json
import re
import shutil
import subprocess

import pytest
import sacrebleu
from PIL import Image
from sacrebleu.significance import PairedTest

from nmt.evaluate import evaluate
from nmt.io import read_lines


@pytest.fixture(scope="module")
def two_system_report(reversal_run, reversal_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    worse = out / "worse.txt"
    refs = read_lines(reversal_data["test"] + ".tgt")
    worse.write_text("".join(" ".join(r.split()[:-1]) + "\n" for r in refs))  # drops a word
    report = evaluate([str(reversal_run)], [str(worse)], out_dir=out / "r", beam_size=3)
    return out / "r", report, refs, worse


def test_scores_match_sacrebleu(two_system_report, reversal_data):
    folder, report, refs, worse = two_system_report
    saved = json.loads((folder / "report.json").read_text())
    assert saved["systems"][0]["scores"] == report["systems"][0]["scores"]
    for system in saved["systems"]:
        hyps = read_lines(folder / f"hypotheses.{system['name'].replace(':', '_')}.txt")
        scores = system["scores"]
        assert scores["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
        assert scores["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
        assert scores["ter"] == round(sacrebleu.corpus_ter(hyps, [refs]).score, 2)
        assert scores["sentences"] == len(refs) == 200
        assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert "TER" in scores["ter_signature"] or "case:lc" in scores["ter_signature"]
        total = sum(b["sentences"] for b in system["buckets"])
        assert total == len(refs)
        for bucket in system["buckets"]:
            lo, _, hi = bucket["bucket"].partition("-")
            hi = int(hi) if hi else 10 ** 6
            src = read_lines(reversal_data["test"] + ".src")
            index = [i for i, s in enumerate(src) if int(lo.rstrip("+")) <= len(s.split()) <= hi]
            assert bucket["bleu"] == round(sacrebleu.corpus_bleu(
                [hyps[i] for i in index], [[refs[i] for i in index]]).score, 2)
        examples = system["examples"]
        best = [e["chrf"] for e in examples["best"]]
        assert best == sorted(best, reverse=True)
        assert examples["best"][0]["chrf"] >= examples["worst"][0]["chrf"]
        e = examples["worst"][0]
        score = sacrebleu.sentence_chrf(e["hypothesis"], [e["reference"]]).score
        assert e["chrf"] == round(score, 2)


def test_significance_is_sacrebleus_paired_bootstrap(two_system_report):
    folder, report, refs, worse = two_system_report
    sig = report["significance"]
    assert sig["baseline"] == report["systems"][0]["name"] and sig["samples"] == 1000
    hyps = [read_lines(folder / f"hypotheses.{s['name'].replace(':', '_')}.txt")
            for s in report["systems"]]
    _, direct = PairedTest([("a", hyps[0]), ("b", hyps[1])], {"BLEU": sacrebleu.BLEU()}, [refs],
                           test_type="bs", n_samples=1000)()
    assert sig["rows"][1]["bleu_p"] == round(direct["BLEU"][1].p_value, 4)
    assert sig["rows"][0]["bleu_p"] is None
    assert sig["rows"][1]["bleu_significant"] is True  # dropping a word every line is worse


def test_images_are_png_and_attention_is_real(two_system_report):
    folder, report, _, _ = two_system_report
    images = sorted(folder.glob("*.png"))
    names = {p.name for p in images}
    assert {"buckets.png", "curves_1.png"} <= names
    assert sum(n.startswith("attention_1_") for n in names) == 4
    for path in images:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            img.verify()
    for example in report["systems"][0]["attention"]:
        weights = example["weights"]
        assert len(weights) == len(example["target"]) and len(weights[0]) == len(example["source"])
        assert example["source"][-1] == "_"
        assert all(abs(sum(row) - 1) < 1e-4 for row in weights)
    curves = report["systems"][0]["curves"]
    assert [s for s, _ in curves["valid_bleu"]] == [100, 200] and "train_loss" in curves


def test_html_is_self_contained(two_system_report):
    folder, _, _, _ = two_system_report
    page = (folder / "report.html").read_text()
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "<link" not in page and "url(" not in page and "@import" not in page
    assert page.count("<img") == len(list(folder.glob("*.png")))
    md = (folder / "report.md").read_text()
    for name in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (folder / name).is_file()


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(two_system_report, tmp_path):
    folder, _, _, _ = two_system_report
    shot = tmp_path / "shot.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", (folder / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        assert img.size == (1200, 2400)
        colours = img.convert("L").getextrema()
        assert colours[0] < 100 < colours[1]  # text and images drawn, not a blank page


def test_the_runs_facts_come_from_its_run_json(two_system_report, reversal_run):
    folder, report, _, worse = two_system_report
    facts = json.loads((reversal_run / "run.json").read_text())
    run, file = report["systems"]
    assert run["training"] == {k: facts[k] for k in ("hardware", "torch", "steps", "train_minutes")}
    assert "training" not in file  # a hypothesis file has no run
    markdown = (folder / "report.md").read_text()
    assert f"| {run['name']} | {facts['steps']:,} | {facts['train_minutes']:.1f} | " \
           f"{facts['hardware']} | {facts['torch']} |" in markdown
