"""The README's main job: the tutorial walkthrough runs end to end, against the offline
Azure DICOM service emulator (the default) and against a real Orthanc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomweb_async.testing import OrthancServer

ROOT = Path(__file__).resolve().parent.parent


def _walk(*args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tutorial.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("all steps passed")
    steps = [line for line in lines if line.startswith("[")]
    assert all(line.startswith("[ok  ]") for line in steps)
    return steps


def _detail(steps: list[str], name: str) -> str:
    [line] = [line for line in steps if f"  {name}: " in line]
    return line.split(f"  {name}: ", 1)[1]


def test_tutorial_walkthrough_against_the_emulator() -> None:
    steps = _walk()
    assert len(steps) == 26
    assert _detail(steps, "store it again") == "409, 45070 expected"
    assert "3 already stored (45070)" in _detail(steps, "store 3 files in one request")
    assert _detail(steps, "retrieve study") == "3 instances"
    assert _detail(steps, "rendered instance").endswith("bytes of JPEG")
    assert _detail(steps, "search PatientName=Anony*") == "1 match"
    for kind in ("instance", "series", "study"):
        assert _detail(steps, f"delete {kind}") == "deleted"
    # Three instances were created, then deleted by the three DELETE steps.
    assert _detail(steps, "change feed") == "3 create, 3 delete"


@pytest.mark.orthanc
def test_tutorial_walkthrough_against_orthanc(orthanc: OrthancServer) -> None:
    # The fixture proves Orthanc is installed; the walkthrough starts its own server.
    steps = _walk("--server", "orthanc")
    assert len(steps) == 25
    assert _detail(steps, "retrieve study") == "3 instances"
    assert _detail(steps, "rendered instance").endswith("bytes of JPEG")
    assert _detail(steps, "delete study") == "not offered by this server (405)"
    assert _detail(steps, "change feed") == "not offered by this server (404)"
