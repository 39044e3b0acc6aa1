"""nmt-serve under hostile load (the short version of benchmarks/serve_load.py): normal,
huge, abandoned and slowloris clients at once; every normal request is answered in time."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_small_requests_are_answered_in_time_beside_huge_slow_and_abandoned_ones(reversal_run):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"),
                             str(reversal_run), "--clients", "16", "--seconds", "5",
                             "--timeout", "20", "--huge", "100"],
                            capture_output=True, timeout=240)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], (result.stdout.decode()[-3000:]
                                                     + result.stderr.decode()[-2000:])
    counts = report["counts"]
    assert counts["normal_ok"] >= 20 and counts.get("normal_failed", 0) == 0
    assert counts.get("huge_status_200", 0) >= 1 and counts.get("abandoned_gave_up", 0) >= 1
    assert counts.get("slowloris", 0) >= 1
    assert report["health"]["status"] == "ok" and report["health"]["abandoned"] >= 1
    assert report["normal_latency_s"]["max"] <= 20
