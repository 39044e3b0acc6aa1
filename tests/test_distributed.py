"""Data-parallel training on 2 CPU processes (gloo, launched by torchrun) equals 1 process,
and the training data is prepared once, by rank 0."""
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from nmt.checkpoint import load_checkpoint
from nmt.config import config_from_dict
from nmt.train import train

from conftest import SMALL_MODEL, reversal_config

ROOT = Path(__file__).resolve().parent.parent


# Runs nmt-train, writing the rank of each process that prepares the data or trains a vocabulary.
COUNTING = """
import os, sys
from nmt import corpus
for name in ("_write", "_vocabularies"):
    def counted(*args, _real=getattr(corpus, name), _name=name, **kwargs):
        with open(os.environ["PREPARED_BY"], "a") as f:
            f.write(f"{_name} {os.environ['RANK']}\\n")
        return _real(*args, **kwargs)
    setattr(corpus, name, counted)
from nmt.cli import train_main
sys.exit(train_main())
"""


def test_two_gloo_processes_match_one_process_with_the_combined_batch(reversal_data, tmp_path):
    settings = dict(train__max_steps=6, train__valid_every=3, train__batch_size=300,
                    train__threads=1, model__dropout=0.0,  # dropout 0: ranks draw different masks
                    **SMALL_MODEL)
    (tmp_path / "counting_train.py").write_text(COUNTING)
    runs = {"single": tmp_path / "single", "ddp": tmp_path / "ddp"}
    # The reference: one process, in this one, with the two ranks' batches in one step.
    train(config_from_dict(reversal_config(reversal_data, train__accumulate=2, **settings)),
          runs["single"])
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(reversal_config(reversal_data, **settings)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(tmp_path / "counting_train.py"), str(config), "--run-dir", str(runs["ddp"]),
               "--no-test"]
    env = dict(os.environ, PREPARED_BY=str(tmp_path / "ddp.prepared"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, capture_output=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    single = load_checkpoint(runs["single"] / "checkpoints" / "last.pt")
    ddp = load_checkpoint(runs["ddp"] / "checkpoints" / "last.pt")
    assert single["train_state"]["step"] == ddp["train_state"]["step"] == 6
    assert len(ddp["rng"]["cpu"]) == 2  # each rank's RNG state, for an exact resume
    for key, value in single["model"].items():
        assert torch.allclose(value, ddp["model"][key], atol=1e-5), key
    # only rank 0 wrote: one log, one set of checkpoints
    assert (runs["ddp"] / "train.log").read_text().count("x 2 processes") == 1
    # rank 0 alone trained the vocabulary and prepared the data; rank 1 mapped the same folder
    assert (tmp_path / "ddp.prepared").read_text().splitlines() == ["_vocabularies 0", "_write 0"]
    assert len(list((runs["ddp"] / "cache").glob("corpus-*"))) == 1
