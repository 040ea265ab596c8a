"""The README's example runs as written (with the server, files and folder swapped in)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicomweb_async.testing import OrthancServer

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no python example"
    return str(blocks[0])


def test_readme_example_is_short() -> None:
    assert len(_example().strip().splitlines()) <= 18


@pytest.mark.orthanc
def test_readme_example_runs(
    clean_orthanc: OrthancServer,
    seed_files: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _example()
    assert '"http://127.0.0.1:8042/dicom-web"' in code
    assert '["a.dcm", "b.dcm"]' in code
    code = code.replace('"http://127.0.0.1:8042/dicom-web"', repr(clean_orthanc.dicomweb_url))
    code = code.replace('["a.dcm", "b.dcm"]', repr([str(p) for p in seed_files]))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out.splitlines()
    study = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
    assert out[-1] == f"3 files under out/{study}/"
    assert len(out) == 4
    assert sorted(p.name for p in (tmp_path / "out" / study).rglob("*.dcm")) == sorted(
        line.split()[0] + ".dcm" for line in out[:3]
    )
