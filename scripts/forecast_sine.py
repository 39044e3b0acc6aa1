"""Forecast sin(x) with the package's recurrent encoder (SPEC §7). See nmt/forecast.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.cli import forecast_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(forecast_main())
