"""The console commands, run as a user runs them: in a process of their own where the process
matters (the console scripts, stdin from a pipe or a file, the umask, streaming), and through
their main functions in this process where only what they print and return does (the same
code, without a second start of torch per call)."""
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading

import pytest
import yaml

from conftest import SMALL_MODEL, reversal_config


def run(*args, stdin=None):
    exe = shutil.which(args[0])
    assert exe, f"{args[0]} is not installed: pip install -e ."
    return subprocess.run([exe, *args[1:]], input=stdin, capture_output=True, timeout=300)


def inproc(command, *args, stdin=b"", umask=None):
    """``command`` run through its main function here, with stdin (bytes, or an open file),
    stdout and stderr as bytes, under ``umask`` if given: its exit status and streams as ``run``
    returns them."""
    from nmt import cli
    main = {"nmt-train": cli.train_main, "nmt-translate": cli.translate_main,
            "nmt-evaluate": cli.evaluate_main}[command]
    streams = sys.stdin, sys.stdout, sys.stderr
    hook = threading.excepthook
    sys.stdin, sys.stdout, sys.stderr = (
        io.TextIOWrapper(data if hasattr(data, "fileno") else io.BytesIO(data), encoding="utf-8")
        for data in (stdin, b"", b""))
    old_umask = os.umask(umask) if umask is not None else None
    try:
        status = main(list(args))
        sys.stdout.flush(), sys.stderr.flush()
        out, err = sys.stdout.buffer.getvalue(), sys.stderr.buffer.getvalue()
    finally:
        sys.stdin, sys.stdout, sys.stderr = streams
        threading.excepthook = hook
        if old_umask is not None:
            os.umask(old_umask)
    return subprocess.CompletedProcess([command, *args], status, out, err)


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr.decode()
    err = result.stderr.decode().strip()
    assert "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def cli_run(reversal_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(reversal_config(reversal_data, train__max_steps=10,
                                                     train__valid_every=5, **SMALL_MODEL)))
    result = run("nmt-train", str(config), "--run-dir", str(folder / "run"),
                 "--set", "model.dropout=0.2", "--set", "decode.beam_size=2")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode()
    assert "best validation BLEU" in out and "BLEU" in out and "chrF" in out
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in out
    assert "report:" in out
    return folder


def test_train_writes_the_resolved_config_and_a_report(cli_run):
    saved = yaml.safe_load((cli_run / "run" / "config.yaml").read_text())
    assert saved["model"]["dropout"] == 0.2 and saved["decode"]["beam_size"] == 2
    folder = cli_run / "run" / "reports" / "test-best-beam2"
    system = json.loads((folder / "report.json").read_text())["systems"][0]
    assert system["scores"]["sentences"] == 200 and "bleu_signature" in system["scores"]
    assert system["decoding"]["beam_size"] == 2 and system["checkpoint"].endswith("best.pt")
    assert (folder / "report.md").read_text().startswith("# Evaluation")
    assert (folder / "report.html").is_file()


def test_resume_continues_from_the_run_directory(cli_run):
    result = inproc("nmt-train", "--run-dir", str(cli_run / "run"), "--resume",
                    "--set", "train.max_steps=15", "--no-test")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "trained 15 steps" in result.stdout.decode()


def test_translate_stdin_to_stdout_keeps_empty_lines(cli_run):
    result = inproc("nmt-translate", str(cli_run / "run"), "--beam-size", "1",
                    stdin="a b c\n\nd e\n".encode())
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""


def test_translate_file_to_file_and_pieces(cli_run, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a b c\nd e f\n")
    out = tmp_path / "out.txt"
    assert inproc("nmt-translate", str(cli_run / "run"), "-i", str(src), "-o", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) == 2
    pieces = inproc("nmt-translate", str(cli_run / "run"), "-i", str(src), "--pieces")
    assert pieces.returncode == 0, pieces.stderr.decode()
    lines = pieces.stdout.decode().split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert all(line.endswith(" _") or line == "_" for line in lines[:2])
    nbest = inproc("nmt-translate", str(cli_run / "run"), "-i", str(src), "--n-best", "2")
    assert nbest.returncode == 0, nbest.stderr.decode()
    lines = nbest.stdout.decode().split("\n")
    assert len(lines) == 3 and all(len(line.split("\t")) == 4 for line in lines[:2])
    # --device auto, as training takes it: the GPU where torch sees one, else the CPU.
    auto = inproc("nmt-translate", str(cli_run / "run"), "-i", str(src), "--device", "auto")
    assert auto.returncode == 0, auto.stderr.decode()
    assert auto.stdout.decode().splitlines() == out.read_text().splitlines()


def test_evaluate_a_run_and_a_hypothesis_file(cli_run, reversal_data, tmp_path):
    result = inproc("nmt-evaluate", str(cli_run / "run"), "--split", "valid", "--beam-size", "1",
                 "--out", str(tmp_path / "rep"), "--json")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout.decode())
    assert report["systems"][0]["scores"]["sentences"] == 100 and (tmp_path / "rep" / "report.md").is_file()
    ref = reversal_data["test"] + ".tgt"
    result = inproc("nmt-evaluate", "--hyp", ref, "--ref", ref)
    assert result.returncode == 0 and "BLEU 100.00" in result.stdout.decode()
    one_line_error(inproc("nmt-evaluate", str(cli_run / "run"), "--hyp", ref),
                   "several systems: say where the report goes (--out)")


def test_bad_input_gives_one_line_errors(cli_run, reversal_data, tmp_path):
    run_dir = str(cli_run / "run")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden: 3\n")
    one_line_error(inproc("nmt-train", str(bad)), "bad.yaml", "unknown key 'model.hidden'")
    one_line_error(inproc("nmt-train", "configs/demo.yaml", "--set", "train.lr=fast"),
                   "--set train.lr=fast: train.lr: expected float")
    one_line_error(inproc("nmt-translate", str(tmp_path / "missing")), "run directory not found")
    one_line_error(inproc("nmt-translate", run_dir, "--checkpoint", "nope.pt"), "nope.pt: checkpoint not found")

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("gut\nSchöne Grüße\n".encode("latin-1"))
    out = tmp_path / "never.txt"
    one_line_error(inproc("nmt-translate", run_dir, "-i", str(latin1), "-o", str(out)),
                   "latin1.txt:2: invalid UTF-8")
    assert not out.exists()  # no half-written output
    one_line_error(run("nmt-translate", run_dir, stdin=b"ok\n\xff\n"), "<stdin>:2: invalid UTF-8")
    one_line_error(inproc("nmt-translate", run_dir, "--device", "gpu"), "device 'gpu'")
    one_line_error(inproc("nmt-translate", run_dir, "-i", str(latin1.parent), "-o", str(out)),
                   "is a directory")
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"not a checkpoint")
    one_line_error(inproc("nmt-translate", run_dir, "--checkpoint", str(not_ckpt)), "cannot read checkpoint")
    one_line_error(inproc("nmt-translate", run_dir, "-i", str(cli_run / "tiny.yaml"), "-o",
                       str(cli_run / "tiny.yaml" / "out.txt")), "tiny.yaml")  # a file, not a folder

    short = tmp_path / "short"
    (tmp_path / "short.src").write_text("a\nb\n")
    (tmp_path / "short.tgt").write_text("a\n")
    cfg = tmp_path / "short.yaml"
    cfg.write_text(yaml.safe_dump(reversal_config(dict(reversal_data, train=str(short)))))
    one_line_error(inproc("nmt-train", str(cfg), "--run-dir", str(tmp_path / "r1")),
                   "short.src has 2 lines but", "short.tgt has 1")
    (tmp_path / "empty.src").write_text("")
    (tmp_path / "empty.tgt").write_text("")
    cfg.write_text(yaml.safe_dump(reversal_config(dict(reversal_data, train=str(tmp_path / "empty")))))
    one_line_error(inproc("nmt-train", str(cfg), "--run-dir", str(tmp_path / "r2")),
                   "empty.src: the training corpus is empty")


def test_translate_output_is_written_as_a_careful_unix_tool_writes(cli_run, tmp_path):
    run_dir = str(cli_run / "run")
    source = tmp_path / "in.src"
    source.write_text("a b c\nd e\n")
    link = tmp_path / "link.txt"
    link.symlink_to(source)
    # The input itself (directly, through a link, or as redirected stdin): refused before any work.
    for output in (source, link):
        one_line_error(inproc("nmt-translate", run_dir, "-i", str(source), "-o", str(output)),
                       f"{output}: is the same file as the input {source}")
    with open(source, "rb") as stdin:
        one_line_error(inproc("nmt-translate", run_dir, "-o", str(source), stdin=stdin),
                       "same file as the input <stdin>")
    assert source.read_text() == "a b c\nd e\n"
    # A link to an output: its target is replaced and keeps its mode; the link stays.
    target, out_link = tmp_path / "target.txt", tmp_path / "out.txt"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    out_link.symlink_to(target)
    assert inproc("nmt-translate", run_dir, "-i", str(source), "-o", str(out_link)).returncode == 0
    assert out_link.is_symlink() and len(target.read_text().splitlines()) == 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    # A new file gets 0666 minus the umask.
    assert inproc("nmt-translate", run_dir, "-i", str(source), "-o", str(tmp_path / "new.txt"),
                  umask=0o022).returncode == 0
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
    # Devices are written to, never replaced.
    result = inproc("nmt-translate", run_dir, "-i", str(source), "-o", "/dev/stdout")
    assert result.returncode == 0 and len(result.stdout.decode().splitlines()) == 2
    inode = os.stat("/dev/null").st_ino
    assert inproc("nmt-translate", run_dir, "-i", str(source), "-o", "/dev/null").returncode == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_ino == inode
    one_line_error(inproc("nmt-translate", run_dir, "-i", str(source), "-o", "/dev/full"),
                   "nmt-translate: error: /dev/full: no space left on the device")


def test_a_bug_is_one_line_and_debug_shows_its_traceback(cli_run, monkeypatch, capsys):
    from nmt.cli import translate_main
    from nmt.translate import Translator

    monkeypatch.setattr(Translator, "load", classmethod(lambda cls, *args: 1 / 0))
    assert translate_main([str(cli_run / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nmt-translate: error: internal error (ZeroDivisionError")
    assert "rerun with --debug" in err
    with pytest.raises(ZeroDivisionError):
        translate_main([str(cli_run / "run"), "--debug"])


def test_translate_streams_chunk_by_chunk(cli_run, tmp_path):
    """Output for the first chunk arrives while the input is still open; the result equals
    translating everything at once."""
    import threading

    run_dir = str(cli_run / "run")
    lines = ["a b c", "d e", "", "f g h i", "j"]
    whole = inproc("nmt-translate", run_dir, stdin="".join(s + "\n" for s in lines).encode())
    assert whole.returncode == 0
    proc = subprocess.Popen([shutil.which("nmt-translate"), run_dir, "--chunk-lines", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = []
    reader = threading.Thread(target=lambda: first.extend([proc.stdout.readline(), proc.stdout.readline()]))
    reader.start()
    proc.stdin.write(b"a b c\nd e\n")
    proc.stdin.flush()
    reader.join(120)  # the first chunk's two lines, with stdin still open
    assert not reader.is_alive() and len(first) == 2, proc.stderr.read()
    rest, _ = proc.communicate(b"\nf g h i\nj\n", timeout=120)
    assert proc.returncode == 0
    assert b"".join(first) + rest == whole.stdout
    # a file output appears only when complete, and equals stdout's
    out = tmp_path / "out.txt"
    source = tmp_path / "in.txt"
    source.write_text("".join(s + "\n" for s in lines))
    assert inproc("nmt-translate", run_dir, "-i", str(source), "-o", str(out),
                  "--chunk-lines", "2").returncode == 0
    assert out.read_bytes() == whole.stdout
    one_line_error(inproc("nmt-translate", run_dir, "--chunk-lines", "0"), "--chunk-lines: 0 is out of range")


def test_empty_test_files_and_samples_before_a_final_test_are_one_line(cli_run, reversal_data, tmp_path):
    empty_src, empty_ref = tmp_path / "e.src", tmp_path / "e.tgt"
    empty_src.write_text("")
    empty_ref.write_text("")
    one_line_error(inproc("nmt-evaluate", str(cli_run / "run"), "--src", str(empty_src), "--ref", str(empty_ref)),
                   "e.src: the test set is empty")
    config = tmp_path / "sampling.yaml"
    config.write_text(yaml.safe_dump(reversal_config(reversal_data, decode__samples=2)))
    one_line_error(inproc("nmt-train", str(config), "--run-dir", str(tmp_path / "never")),
                   "decode.samples: the final test scores search output")
    assert not (tmp_path / "never").exists()  # refused before any work
