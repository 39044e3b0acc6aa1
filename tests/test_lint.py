"""The code passes ruff (configured in pyproject.toml: pycodestyle, pyflakes, lines of at most 100 in nmt/ and scripts/)."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[dev]'"
    done = subprocess.run([ruff, "check", "--no-cache", "nmt", "tests", "benchmarks", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
