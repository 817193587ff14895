"""The README's first command runs this demo: it must keep working, and its data check must hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_runs_and_verifies_its_data() -> None:
    result = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "every byte still there: True" in out
    assert "chain now ['base.qcow2']" in out
    assert "STOPPED destroyed" in out and out.rstrip().endswith("demo finished")
    samples = [(int(cur), int(end)) for cur, end in re.findall(r"active commit: (\d+) of (\d+) KiB", out)]
    assert samples, out
    assert all(0 < end and cur <= end for cur, end in samples), samples  # never "0 of 0 KiB"
    assert [cur for cur, _ in samples] == sorted(cur for cur, _ in samples)
    assert samples[-1][0] == samples[-1][1] >= 4096  # it ends where the job did: all 4 MiB copied

