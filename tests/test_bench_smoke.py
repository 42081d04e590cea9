"""The bench harness runs end to end at its smoke size: a check that it works, not a timed assertion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILT = ("intake", "sightings", "visits", "latency", "import", "footprint")


def run_smoke(out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m bench --size smoke`; on a timeout it gets SIGTERM first, so that it stops what it started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--size", "smoke", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"the smoke run took longer than {timeout:.0f} s:\n{stdout[-3000:]}\n{stderr[-5000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.timeout(300)
def test_smoke_run_gives_every_scenario_a_figure_and_misses_no_alert(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = run_smoke(out, timeout=180)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    result = json.loads(out.read_text())
    assert result["ok"] and result["failures"] == []
    for name in BUILT:
        scenario = result["scenarios"][name]
        assert scenario["status"] == "ok", (name, scenario)
        assert isinstance(scenario["figure"], int | float) and scenario["figure"] > 0, (name, scenario)
        assert scenario["problems"] == [], (name, scenario["problems"])
    latency = result["scenarios"]["latency"]
    assert latency["figures"]["missed"] == 0
    assert latency["details"]["urgent_visits_accepted"] > 0
    sightings = result["scenarios"]["sightings"]["details"]
    assert sightings["missed"] == 0 and sightings["alerts_seen"] == sightings["matching"] > 0
    imported = result["scenarios"]["import"]
    assert imported["details"]["summary"]["applied"] == imported["details"]["rows"]
    assert imported["figures"]["card_p99_ms"] > 0
    assert latency["details"]["deliveries_measured"] > 0
    assert latency["details"]["feed_filters_by_beat"] is True, "each desk officer gets their own beat's alerts"
    assert latency["details"]["unexpected_alerts"] == 0
    for key in ("publish_windowed", "fetch_ack", "executemany", "copy"):
        assert result["floors"][key]["rate"] > 0, key
    assert "1 intake" in done.stdout and "5 import" in done.stdout
