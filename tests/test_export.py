"""Model folders (nmt-export, save_pretrained / from_pretrained): they decode as the run, and
loading one runs no code."""
import json
import pickle
import shutil
import sys

import pytest
import yaml

from conftest import reversal_pairs
from nmt.cli import evaluate_main, export_main, translate_main
from nmt.errors import CheckpointError, ConfigError, NmtError
from nmt.evaluate import evaluate
from nmt.translate import Translator

SENTENCES = reversal_pairs(200, seed=31)[0]


@pytest.fixture(scope="module")
def evaluated_run(reversal_run, tmp_path_factory):
    """A copy of the run with a test report (what the card takes its scores from)."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(reversal_run, run)
    evaluate([run], split="test")
    return run


@pytest.fixture(scope="module")
def folder(evaluated_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder") / "model"
    assert export_main([str(evaluated_run), str(out)]) == 0
    return out


def _found(translator, **options):
    return [[(h.tokens, h.score) for h in hyps]
            for hyps in translator.hypotheses(SENTENCES, **options)]


def test_a_model_folder_decodes_exactly_as_its_run(evaluated_run, folder):
    run, loaded = Translator.load(evaluated_run), Translator.from_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == \
        ["README.md", "config.json", "model.safetensors", "spm.model"]
    for options in ({"beam_size": 1}, {"beam_size": 3, "n_best": 2}, {"samples": 2, "seed": 5}):
        assert _found(loaded, **options) == _found(run, **options), options
    assert loaded.run.step == run.run.step


def test_the_card_is_in_the_hubs_format_with_the_runs_scores(evaluated_run, folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    report = json.loads(next((evaluated_run / "reports").glob("test-best-*/report.json"))
                        .read_text())
    scores = report["systems"][0]["scores"]
    assert meta["language"] == ["src", "tgt"] and meta["library_name"] == "nmt"
    assert meta["pipeline_tag"] == "translation" and "license" in meta
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"bleu": scores["bleu"], "chrf": scores["chrf"], "ter": scores["ter"]}
    for signature in ("bleu_signature", "chrf_signature", "ter_signature"):
        assert scores[signature] in body
    assert 'Translator.from_pretrained("' in body and "## Limitations" in body
    facts = json.loads((evaluated_run / "run.json").read_text())  # the card's source
    assert f"- Hardware: {facts['hardware']}." in body
    assert [r["folder"] for r in facts["reports"]] == ["reports/test-best-beam3"]
    # no local paths shared
    assert str(evaluated_run) not in text + (folder / "config.json").read_text()


def test_the_commands_take_a_model_folder(folder, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SENTENCES[:20]) + "\n", encoding="utf-8")
    assert translate_main([str(folder), "-i", str(source), "-o", str(tmp_path / "out.txt")]) == 0
    expected = Translator.from_pretrained(folder).translate(SENTENCES[:20])
    assert (tmp_path / "out.txt").read_text().splitlines() == expected
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join(" ".join(reversed(s.split())) for s in SENTENCES[:20]) + "\n")
    assert evaluate_main([str(folder), "--src", str(source), "--ref", str(reference),
                          "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.json").is_file()
    assert translate_main([str(folder), "--checkpoint", "last", "-i", str(source)]) == 2
    assert "a model folder holds one model" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_write(evaluated_run, folder, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert export_main([str(evaluated_run), str(folder)]) == 2  # not empty: nothing is replaced
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert export_main([str(evaluated_run), str(tmp_path / "e"),
                        "--ensemble", str(evaluated_run)]) == 2
    assert "--ensemble" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert export_main([str(evaluated_run), str(tmp_path / "s"),
                        "--checkpoint", "step-999999"]) == 2
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))
    pair = Translator.load(evaluated_run, ensemble=[str(evaluated_run)])
    with pytest.raises(ConfigError, match="ensemble"):
        pair.save_pretrained(tmp_path / "pair")
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert export_main([str(evaluated_run), str(tmp_path / "empty"), "--checkpoint", "last"]) == 0
    assert Translator.from_pretrained(tmp_path / "empty").run.step == \
        Translator.load(evaluated_run, "last").run.step


def _card_bleu(run) -> float:
    from nmt.export import model_card
    from nmt.loading import load_run
    meta = yaml.safe_load(model_card(load_run(run)).split("---\n", 2)[1])
    return meta["model-index"][0]["results"][0]["metrics"][0]["value"]


def test_the_card_takes_the_newest_report_run_json_records(evaluated_run, tmp_path):
    from nmt.rundir import RunDir
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    recorded = json.loads((run / "reports" / "test-best-beam3" / "report.json").read_text())
    stray = run / "reports" / "test-best-beam9"  # named as nmt-evaluate names, not recorded
    shutil.copytree(run / "reports" / "test-best-beam3", stray)
    changed = json.loads((stray / "report.json").read_text())
    changed["systems"][0]["scores"]["bleu"] = 1.5
    (stray / "report.json").write_text(json.dumps(changed))
    assert _card_bleu(run) == recorded["systems"][0]["scores"]["bleu"] != 1.5
    RunDir(run).facts.add_report(stray, set="test", checkpoint="best",
                                 step=recorded["systems"][0]["step"], beam_size=9, int8=False,
                                 ensemble=0)
    assert _card_bleu(run) == 1.5


def test_a_run_older_than_run_json_exports_and_says_what_is_missing(evaluated_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(evaluated_run, old)
    (old / "run.json").unlink()
    assert export_main([str(old), str(tmp_path / "model")]) == 0
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    assert "- Hardware: not recorded (the run predates run.json)." in card
    assert "No test report is recorded (the run predates run.json; `nmt-evaluate RUN` " \
        "records one)." in card
    assert "model-index" not in card and "minutes of training" in card  # time: the checkpoint's
    assert _found(Translator.from_pretrained(tmp_path / "model")) == _found(Translator.load(old))


class _Payload:
    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_loading_a_folder_runs_no_code(folder, tmp_path):
    """A pickle in place of the weights would run code under pickle.load; safetensors reads
    tensors only, so the crafted file is refused and its payload never runs."""
    crafted = tmp_path / "crafted"
    shutil.copytree(folder, crafted)
    _Payload.marker = tmp_path / "pwned"
    (crafted / "model.safetensors").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Translator.from_pretrained(crafted)
    assert not _Payload.marker.exists()
    pickle.loads((crafted / "model.safetensors").read_bytes())  # the payload does run under pickle
    assert _Payload.marker.exists()


def test_a_damaged_folder_is_refused_in_one_line(folder, tmp_path):
    def damaged(name, change):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        change(copy)
        return copy
    wrong_format = damaged("format",
                           lambda f: (f / "config.json").write_text('{"format": "other"}'))
    with pytest.raises(CheckpointError, match="not an nmt model folder"):
        Translator.from_pretrained(wrong_format)

    def bigger_model(f):
        record = json.loads((f / "config.json").read_text())
        record["config"]["model"]["decoder_hidden_size"] += 8
        (f / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="not this model's weights"):
        Translator.from_pretrained(damaged("shapes", bigger_model))

    def bad_value(f):
        record = json.loads((f / "config.json").read_text())
        record["config"]["model"]["cell"] = "__import__('os')"
        (f / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="model.cell"):
        Translator.from_pretrained(damaged("value", bad_value))

    def other_vocab(f):  # the sentencepiece model is not the one the weights were trained with
        record = json.loads((f / "config.json").read_text())
        record["vocab"]["tgt"]["sha256"] = "0" * 64
        (f / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="tgt vocabulary .* does not match"):
        Translator.from_pretrained(damaged("vocab", other_vocab))


def test_hub_names_go_through_huggingface_hub(folder, tmp_path, monkeypatch):
    """The Hub path, on local files: snapshot_download's answer is a folder like this one."""
    import huggingface_hub
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo: asked.append(repo) or str(folder))
    assert Translator.from_pretrained("someone/nmt-src-tgt").translate(SENTENCES[:5]) == \
        Translator.from_pretrained(folder).translate(SENTENCES[:5])
    assert asked == ["someone/nmt-src-tgt"]
    uploaded = {}

    class Api:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private, exist_ok):
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            shutil.copytree(folder_path, tmp_path / "uploaded")
            return f"https://hub.example/{repo_id}"
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    Translator.from_pretrained(folder).push_to_hub("someone/copy")
    assert uploaded["repo"] == "someone/copy"
    assert _found(Translator.from_pretrained(tmp_path / "uploaded"), beam_size=2) == \
        _found(Translator.from_pretrained(folder), beam_size=2)
    assert (tmp_path / "uploaded" / "README.md").read_text() == (folder / "README.md").read_text()


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(NmtError, match=r"nmt\[hub\]"):
        Translator.from_pretrained("someone/model")
    with pytest.raises(CheckpointError, match="not a model folder"):
        Translator.from_pretrained("no/such/folder")


def test_the_server_serves_a_model_folder(folder):
    from nmt.serve import Limits
    from conftest import Running, get, post_all
    translator = Translator.from_pretrained(folder)
    running = Running(translator, Limits())
    try:
        status, answer = post_all(running.url, [{"sentences": SENTENCES[:5], "beam_size": 2}])[0]
        info = get(f"{running.url}/info")
    finally:
        running.stop()
    assert status == 200
    assert answer["translations"] == translator.translate(SENTENCES[:5], beam_size=2)
    assert info["step"] == translator.run.step
