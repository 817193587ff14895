"""The README's first command runs this demo: it must keep working, and its data check must hold."""

from __future__ import annotations

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
