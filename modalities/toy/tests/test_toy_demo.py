"""`distill demo` on the toy modality: a short budget still writes the report and pictures."""
from __future__ import annotations

import json

import pytest

from distill.demo import run_demo


@pytest.mark.slow
def test_demo_writes_report(tmp_path):
    run_dir = run_demo(minutes=0.05, out=str(tmp_path / "demo"), modality="toy")
    report = (run_dir / "report.md").read_text()
    assert "| teacher | heun | 18 | 35 |" in report and "| dmd2 |" in report
    assert (run_dir / "samples" / "comparison.png").is_file()
    rows = json.loads((run_dir / "eval.json").read_text())["rows"]
    assert [(r["method"], r["nfe"]) for r in rows] == [("teacher", 35), ("teacher", 1), ("dmd2", 1)]
