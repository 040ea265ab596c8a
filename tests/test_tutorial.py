"""The README's main job: the tutorial walkthrough runs end to end against Orthanc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomweb_async.testing import OrthancServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.orthanc
def test_tutorial_walkthrough_passes_against_its_own_orthanc(orthanc: OrthancServer) -> None:
    # The fixture proves Orthanc is installed; the walkthrough starts its own server.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tutorial.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("all steps passed")
    steps = [line for line in lines if line.startswith("[")]
    assert len(steps) == 24
    assert all(line.startswith("[ok  ]") for line in steps)
    assert any("retrieve study: 3 instances" in line for line in steps)
    assert any("search PatientName=Anony*: 1 match" in line for line in steps)
