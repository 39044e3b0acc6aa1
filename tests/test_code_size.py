"""The package stays readable: no function over 60 lines, the Trainer and the training loop short."""
import ast
import inspect
from pathlib import Path

import nmt
from nmt import train

PACKAGE = Path(nmt.__file__).parent


def test_no_function_in_the_package_is_over_60_lines():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_training_loop_reads_top_to_bottom():
    assert len(inspect.getsource(train.train).splitlines()) <= 60


def test_the_trainer_only_trains():
    """The schedule (nmt.schedule) and saving and restoring (nmt.checkpoint) live elsewhere."""
    assert len(inspect.getsource(train.Trainer).splitlines()) <= 150
