"""Thin wrapper: the same as the nmt-average console command (works from a checkout too)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.cli import average_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(average_main())
