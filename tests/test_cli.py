"""The ``dicomweb-async`` command line.

Commands run in a subprocess (``python -m dicomweb_async``), as a user would run them,
against a real Orthanc and against the loopback server; argument parsing, the size and
frame parsers, the tables and the progress display are tested in-process.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicomweb_async import DownloadOutcome, DownloadReport, FileOutcome, Progress, UploadReport
from dicomweb_async._cli.args import build_parser, parse_filters, parse_frames, parse_size
from dicomweb_async._cli.console import Console
from dicomweb_async._cli.main import main
from dicomweb_async._cli.secrets import Redactor
from dicomweb_async._cli.tables import download_summary, format_table, upload_summary
from dicomweb_async.testing import OrthancServer
from tests.loopback_server import LoopbackServer

STUDY = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
BLUE_SERIES = "1.2.826.0.1.3680043.8.498.77033797676425927098669402985243398207"
BLUE_SOP = "1.2.826.0.1.3680043.8.498.13273713909719068980354078852867170114"
SECRET = "s3cr3t-T0ken-value"
PASSWORD = "pa55-w0rd-value"


# -- helpers ----------------------------------------------------------------------------------


def run_cli(
    command: str,
    *extra: str | Path,
    url: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``dicomweb-async [--url URL] COMMAND... EXTRA...`` as a user would.

    ``command`` is split on spaces (UIDs and URLs have none); paths go in ``extra``.
    DICOMWEB_URL is unset unless ``env`` sets it.
    """
    environment = {k: v for k, v in os.environ.items() if k != "DICOMWEB_URL"}
    environment.update(env or {})
    argv = ["--url", url] if url else []
    argv += command.split() + [str(item) for item in extra]
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_async", *argv],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def counts(summary: str) -> dict[str, int]:
    """Status -> count from the table printed after an upload or download."""
    found = re.findall(
        r"^  (stored|already stored|failed|skipped|total|downloaded|already on disk|copied"
        r"|already present)\s+(\d+)",
        summary,
        re.M,
    )
    return {name: int(number) for name, number in found}


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def good_folder(tmp_path: Path, seed_files: list[Path]) -> Path:
    """The three seed files in nested folders."""
    root = tmp_path / "good"
    (root / "a" / "b").mkdir(parents=True)
    targets = [root / "one.dcm", root / "a" / "two.dcm", root / "a" / "b" / "three.dcm"]
    for seed, target in zip(seed_files, targets, strict=True):
        shutil.copy(seed, target)
    return root


@pytest.fixture
def mixed_folder(good_folder: Path, seed_files: list[Path]) -> Path:
    """The good files plus a text file and a DICOM file cut after 400 bytes."""
    (good_folder / "notes.txt").write_text("not DICOM\n")
    (good_folder / "a" / "broken.dcm").write_bytes(seed_files[0].read_bytes()[:400])
    return good_folder


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "server-store") as server:
        yield server
        assert server.errors == []


# -- parsers (in-process) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("4096", 4096),
        ("500k", 500_000),
        ("500K", 500_000),
        ("100m", 100_000_000),
        ("100MB", 100_000_000),
        ("4g", 4_000_000_000),
        ("1t", 10**12),
        ("1.5k", 1500),
        ("64MiB", 64 * 2**20),
        ("1ki", 1024),
        ("2gi", 2 * 2**30),
        (" 10 m ", 10_000_000),
        ("1b", 1),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "k", "abc", "0", "0.1", "-5", "1x", "1 kk", "1e6", "1i"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_frames() -> None:
    assert parse_frames("1") == [1]
    assert parse_frames("3,1,2") == [3, 1, 2]
    assert parse_frames("1,2,5-7") == [1, 2, 5, 6, 7]
    assert parse_frames("2-3,3") == [2, 3]


@pytest.mark.parametrize("text", ["", "0", "a", "1,,2", "3-1", "1-", "-2", "1.5"])
def test_parse_frames_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_frames(text)


def test_parse_filters() -> None:
    assert parse_filters(["PatientID=ID1", "PatientName=Anony*"]) == {
        "PatientID": "ID1",
        "PatientName": "Anony*",
    }
    # A repeated key matches any of its values; '=' inside a value is kept.
    assert parse_filters(["Modality=CT", "Modality=MR", "X=a=b"]) == {
        "Modality": ["CT", "MR"],
        "X": "a=b",
    }
    assert parse_filters(["StudyDescription="]) == {"StudyDescription": ""}
    for bad in (["PatientID"], ["=ID1"]):
        with pytest.raises(ValueError):
            parse_filters(bad)


# -- argument parsing (in-process) ------------------------------------------------------------


def test_upload_defaults() -> None:
    args = build_parser().parse_args(["--url", "http://h/dw", "upload", "a", "b"])
    assert args.command == "upload"
    assert args.sources == ["a", "b"]
    assert args.concurrency == 8
    assert args.max_request_bytes is None
    assert args.journal is None
    assert args.verbose is False and args.quiet is False


def test_connection_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(
        ["upload", "d", "--url", "http://h", "-q", "--max-request-bytes", "100m"]
    )
    assert after.url == "http://h" and after.quiet is True
    assert after.max_request_bytes == 100_000_000
    before = parser.parse_args(["--url", "http://h", "-v", "--token", "t", "upload", "d"])
    assert before.url == "http://h" and before.verbose is True and before.token == "t"
    # An option given before the command is not reset by the subcommand's parser.
    assert before.quiet is False


def test_download_search_retrieve_delete_arguments() -> None:
    parser = build_parser()
    down = parser.parse_args(
        ["download", "1.2", "1.3", "--out", "o", "--no-skip-existing", "--concurrency", "2"]
    )
    assert down.studies == ["1.2", "1.3"] and down.out == "o"
    assert down.skip_existing is False and down.concurrency == 2
    line = "search instances --study 1.2 --filter A=b --filter C=d --field Rows --limit 5"
    search = parser.parse_args([*line.split(), "--offset", "10", "--all", "--json"])
    assert search.level == "instances" and search.study == "1.2"
    assert search.filter == ["A=b", "C=d"] and search.field == ["Rows"]
    assert (search.limit, search.offset, search.all, search.json) == (5, 10, True, True)
    frames = parser.parse_args(
        ["retrieve", "frames", "1", "2", "3", "--frames", "1-2,4", "--out", "d"]
    )
    assert frames.what == "frames" and frames.frames == [1, 2, 4]
    metadata = parser.parse_args(["retrieve", "metadata", "1.2"])
    assert (metadata.study, metadata.series, metadata.sop) == ("1.2", None, None)
    delete = parser.parse_args(["delete", "1.2", "1.3"])
    assert (delete.study, delete.series, delete.sop) == ("1.2", "1.3", None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["upload", "x"], "DICOMWEB_URL"),
        (["--url", "ftp://h", "upload", "x"], "http"),
        (["--url", "http://h", "upload"], "FOLDER_OR_FILE"),
        (["--url", "http://h", "upload", "x", "--concurrency", "0"], "at least 1"),
        (["--url", "http://h", "upload", "x", "--max-request-bytes", "12x"], "not a size"),
        (["--url", "http://h", "download", "--out", "o"], "STUDY_UID"),
        (["--url", "http://h", "download", "--out", "o", "--filter", "oops"], "KEY=VALUE"),
        (["--url", "http://h", "search", "patients"], "invalid choice"),
        (["--url", "http://h", "search", "studies", "--series", "1.2"], "--series"),
        (["--url", "http://h", "retrieve", "frames", "1", "2", "3", "--frames", "0"], "frame"),
        (["--url", "http://h", "--token", "t", "--user", "u", "search", "studies"], "not both"),
        (["--url", "http://h", "--token-env", "NO_SUCH_VAR_X", "search", "studies"], "not set"),
        (["--url", "http://h", "--password", "p", "search", "studies"], "--user"),
        (["--url", "http://h", "--user", "u", "search", "studies"], "--password-env"),
        (["--url", "http://h", "search", "studies", "--bogus"], "unrecognized"),
        (["--url", "http://h", "upload", "x", "--max-attempts", "0"], "at least 1"),
        (["copy", "--from", "http://a", "1.2"], "--to"),
        (["copy", "--from", "http://a", "--to", "http://b"], "STUDY_UID"),
        (["--url", "http://h", "copy", "--from", "http://a", "--to", "http://b", "1"], "--url"),
        (["copy", "--from", "ftp://a", "--to", "http://b", "1.2"], "--from must be"),
        (
            ["copy", "--from", "http://a", "--to", "http://b", "1", "--to-user", "u"],
            "password-env",
        ),
        (
            [
                "copy",
                "--from",
                "http://a",
                "--to",
                "http://b",
                "1",
                "--to-token-env",
                "T",
                "--to-azure",
            ],
            "give one of",
        ),
        (
            [
                "copy",
                "--from",
                "http://a",
                "--to",
                "http://b",
                "1",
                "--from-token-env",
                "NO_SUCH_VAR_X",
            ],
            "not set",
        ),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DICOMWEB_URL", raising=False)
    monkeypatch.delenv("NO_SUCH_VAR_X", raising=False)
    # Not a terminal, so --user without a password cannot prompt.
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.startswith("usage: dicomweb-async")


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "upload" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "dicomweb-async" in capsys.readouterr().out


def test_secrets_are_redacted_from_usage_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DICOMWEB_URL", raising=False)
    url = f"ftp://user:{PASSWORD}@127.0.0.1/x"
    assert main(["--url", url, "--token", SECRET, "search", "studies"]) == 2
    err = capsys.readouterr().err
    assert "ftp://user:***@127.0.0.1/x" in err
    assert PASSWORD not in err
    assert main(["--url", "http://h", "--token", SECRET, "search", "studies", SECRET]) == 2
    err = capsys.readouterr().err
    assert "unrecognized" in err and SECRET not in err


def test_redactor() -> None:
    redact = Redactor(["long-secret-1", "", "long-secret-1-and-more"])
    redact.add(None)
    assert redact("x long-secret-1-and-more:long-secret-1 y") == "x ***:*** y"
    # Long secrets are masked anywhere, even inside other text.
    assert redact("Basic QUJDlong-secret-1") == "Basic QUJD***"
    # Short ones only where they stand alone, so ordinary words stay readable.
    redact.add("pw")
    assert redact("pw password user:pw@host") == "*** password user:***@host"
    assert Redactor()("untouched") == "untouched"


# -- output formatting (in-process) -----------------------------------------------------------


def test_format_table() -> None:
    results = [
        {
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
            "00201208": {"vr": "IS", "Value": [12]},
        },
        {"0020000D": {"vr": "UI", "Value": ["1.2.345"]}, "00100010": {"vr": "PN"}},
    ]
    columns = [
        "StudyInstanceUID",
        "PatientName",
        "StudyDate",  # empty in every row: left out
        "ModalitiesInStudy",
        "00201208",
        "NoSuchKeyword",
    ]
    assert format_table(results, columns) == [
        "StudyInstanceUID  PatientName  ModalitiesInStudy  NumberOfStudyRelatedInstances",
        "1.2.3             Doe^Jane     CT\\MR              12",
        "1.2.345",
    ]


def _event(done: int, total: int | None = 10, final: bool = False) -> Progress:
    return Progress("upload", done, 1, 2, total, done * 1_000_000, 2.0, final)


def test_plain_progress_is_throttled_and_ends_with_the_final_state() -> None:
    now = [0.0]
    stream = io.StringIO()
    console = Console(stream, tty=False, interval=1.0, clock=lambda: now[0])
    for step in range(5):
        now[0] = step * 0.4
        console.progress(_event(step))
    console.progress(_event(7, final=True))
    lines = stream.getvalue().splitlines()
    # t = 0.0 and 1.2 pass the one-second throttle; the final line always prints.
    assert len(lines) == 3
    assert lines[0] == "upload: 3/10 files (0 ok, 1 failed, 2 skipped), 0.0 MB, 0.0 MB/s, 2.0 s"
    assert lines[-1].startswith("upload: 10/10 files (7 ok, 1 failed, 2 skipped), 7.0 MB")
    assert "3.5 MB/s" in lines[-1]


def test_quiet_console_draws_no_progress() -> None:
    stream = io.StringIO()
    console = Console(stream, show_progress=False, tty=True)
    console.progress(_event(1))
    console.progress(_event(2, final=True))
    assert stream.getvalue() == ""


def test_tty_progress_bar_redraws_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    stream = io.StringIO()
    console = Console(stream, tty=True)
    console.progress(_event(2, total=None))
    console.progress(_event(7))
    console.message("a log line")
    console.progress(_event(7, final=True))
    out = stream.getvalue()
    assert out.startswith("\rupload [")
    assert "5/? files" in out and "10/10 files" in out
    assert "a log line\n" in out
    assert out.endswith("\n")
    for line in out.replace("\r", "\n").splitlines():
        assert len(line) < 100


def test_upload_summary_caps_the_list_of_failures() -> None:
    outcomes = [
        FileOutcome(Path(f"f{i}.dcm"), "failed", message=f"bad\n  header {i}") for i in range(25)
    ]
    outcomes += [FileOutcome(Path("ok.dcm"), "stored", size=2_000_000)]
    outcomes += [FileOutcome(Path("x.txt"), "skipped", message="not DICOM")]
    lines = upload_summary(UploadReport(outcomes, elapsed=1.0))
    text = "\n".join(lines)
    assert counts(text) == {
        "stored": 1,
        "already stored": 0,
        "failed": 25,
        "skipped": 1,
        "total": 27,
    }
    assert "  f0.dcm: bad header 0" in lines
    assert "  f19.dcm: bad header 19" in lines
    assert "f20.dcm" not in text
    assert "  ... and 5 more" in lines
    assert "  x.txt: not DICOM" in lines
    assert "2.0 MB sent in 1.00 s (2.0 MB/s)" in text


def test_download_summary_names_what_failed() -> None:
    report = DownloadReport(
        [
            DownloadOutcome("1.2", "1.3", "1.4", "downloaded", Path("p"), 5_000_000),
            DownloadOutcome("1.2", "1.3", "1.5", "failed", message="not in the response"),
            DownloadOutcome("9.9", None, None, "failed", message="404 Not Found"),
        ],
        elapsed=2.0,
    )
    lines = download_summary(report)
    assert counts("\n".join(lines))["failed"] == 2
    assert "  1.2/1.3/1.5: not in the response" in lines
    assert "  study 9.9: 404 Not Found" in lines


# -- against a real Orthanc -------------------------------------------------------------------


def test_upload_reports_stored_failed_and_skipped(
    clean_orthanc: OrthancServer, mixed_folder: Path
) -> None:
    result = run_cli("upload", mixed_folder, url=clean_orthanc.dicomweb_url)
    assert result.returncode == 1, result.stderr
    assert counts(result.stdout) == {
        "stored": 3,
        "already stored": 0,
        "failed": 1,
        "skipped": 1,
        "total": 5,
    }
    assert f"failed (1):\n  {mixed_folder / 'a' / 'broken.dcm'}: " in result.stdout
    assert f"skipped (1):\n  {mixed_folder / 'notes.txt'}: not a DICOM" in result.stdout
    # Not a terminal: plain progress lines, the last one with the final counts.
    progress = [line for line in result.stderr.splitlines() if line.startswith("upload: ")]
    assert progress, result.stderr
    assert progress[-1].startswith("upload: 5/5 files (3 ok, 1 failed, 1 skipped)")
    assert "\r" not in result.stderr
    # pydicom's warnings about the damaged header stay out of the way without -v.
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_upload_of_good_files_exits_0_and_quiet_prints_no_progress(
    clean_orthanc: OrthancServer, good_folder: Path
) -> None:
    result = run_cli("-q upload", good_folder, url=clean_orthanc.dicomweb_url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert counts(result.stdout)["stored"] == 3
    assert "failed (" not in result.stdout and "skipped (" not in result.stdout


def test_second_upload_with_the_journal_skips_everything(
    clean_orthanc: OrthancServer, good_folder: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "upload.journal"
    url = clean_orthanc.dicomweb_url
    first = run_cli("upload --max-request-bytes 10m", good_folder, "--journal", journal, url=url)
    assert first.returncode == 0, first.stderr
    assert counts(first.stdout)["stored"] == 3
    assert len(journal.read_text().splitlines()) == 3
    second = run_cli("upload", good_folder, "--journal", journal, url=url)
    assert second.returncode == 0, second.stderr
    assert counts(second.stdout) == {
        "stored": 0,
        "already stored": 3,
        "failed": 0,
        "skipped": 0,
        "total": 3,
    }
    assert "3 already stored according to the journal" in second.stdout


@pytest.fixture
def seeded_orthanc(clean_orthanc: OrthancServer, good_folder: Path) -> OrthancServer:
    result = run_cli("-q upload", good_folder, url=clean_orthanc.dicomweb_url)
    assert result.returncode == 0, result.stdout + result.stderr
    return clean_orthanc


def test_search_json(seeded_orthanc: OrthancServer) -> None:
    url = seeded_orthanc.dicomweb_url
    result = run_cli("search studies --filter PatientName=Anony* --json", url=url)
    assert result.returncode == 0, result.stderr
    studies = json.loads(result.stdout)
    assert len(studies) == 1
    assert studies[0]["0020000D"]["Value"] == [STUDY]
    assert studies[0]["00100020"]["Value"] == ["ID1"]
    nothing = run_cli("search studies --filter PatientID=nobody --json", url=url)
    assert nothing.returncode == 0 and json.loads(nothing.stdout) == []


def test_search_tables(seeded_orthanc: OrthancServer) -> None:
    url = seeded_orthanc.dicomweb_url
    studies = run_cli("search studies", url=url)
    assert studies.returncode == 0, studies.stderr
    header, *rows = studies.stdout.splitlines()
    assert header.split()[:4] == ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate"]
    assert len(rows) == 1
    assert rows[0].startswith(STUDY) and "ID1" in rows[0] and "20200922" in rows[0]

    series = run_cli(f"search series --study {STUDY}", url=url)
    assert series.returncode == 0, series.stderr
    header, *rows = series.stdout.splitlines()
    assert header.split()[:3] == ["SeriesInstanceUID", "Modality", "SeriesNumber"]
    assert len(rows) == 2 and any(row.startswith(BLUE_SERIES) for row in rows)

    instances = run_cli(f"search instances --study {STUDY} --field Rows --limit 2", url=url)
    assert instances.returncode == 0, instances.stderr
    header, *rows = instances.stdout.splitlines()
    assert header.split() == ["SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", "Rows"]
    assert len(rows) == 2 and all(row.split()[-1] == "979" for row in rows)

    everything = run_cli("search instances --limit 1 --all", url=url)
    assert everything.returncode == 0, everything.stderr
    assert len(everything.stdout.splitlines()) == 1 + 3

    none = run_cli("search series --filter Modality=MR", url=url)
    assert none.returncode == 0 and none.stdout == "" and "no matches" in none.stderr


def test_url_from_the_environment(seeded_orthanc: OrthancServer) -> None:
    result = run_cli("search studies --json", env={"DICOMWEB_URL": seeded_orthanc.dicomweb_url})
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 1


def test_download_writes_the_seed_files(
    seeded_orthanc: OrthancServer, seed_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    url = seeded_orthanc.dicomweb_url
    result = run_cli(f"download {STUDY} --out", out, url=url)
    assert result.returncode == 0, result.stderr
    assert counts(result.stdout)["downloaded"] == 3
    assert len(list(out.rglob("*.dcm"))) == 3
    for seed in seed_files:
        ds = pydicom.dcmread(seed, stop_before_pixels=True)
        target = out / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert target.read_bytes() == seed.read_bytes()
    assert any(line.startswith("download: 3/3 instances") for line in result.stderr.splitlines())

    again = run_cli(f"download {STUDY} --out", out, url=url)
    assert again.returncode == 0, again.stderr
    assert counts(again.stdout)["already on disk"] == 3
    assert counts(again.stdout)["downloaded"] == 0

    forced = run_cli(f"-q download {STUDY} --no-skip-existing --out", out, url=url)
    assert forced.returncode == 0 and counts(forced.stdout)["downloaded"] == 3


def test_download_by_filter(seeded_orthanc: OrthancServer, tmp_path: Path) -> None:
    out = tmp_path / "by-filter"
    result = run_cli("download --filter PatientID=ID1 --out", out, url=seeded_orthanc.dicomweb_url)
    assert result.returncode == 0, result.stderr
    assert "1 study matches the filters" in result.stderr
    assert len(list((out / STUDY).rglob("*.dcm"))) == 3


def test_download_of_a_missing_study_fails(seeded_orthanc: OrthancServer, tmp_path: Path) -> None:
    result = run_cli("download 1.2.3.4 --out", tmp_path, url=seeded_orthanc.dicomweb_url)
    assert result.returncode == 1
    assert counts(result.stdout)["failed"] == 1
    assert "study 1.2.3.4: " in result.stdout


def test_retrieve_metadata_instance_and_frames(
    seeded_orthanc: OrthancServer, seed_files: list[Path], tmp_path: Path
) -> None:
    url = seeded_orthanc.dicomweb_url
    study = run_cli(f"retrieve metadata {STUDY}", url=url)
    assert study.returncode == 0, study.stderr
    assert len(json.loads(study.stdout)) == 3
    one = run_cli(f"retrieve metadata {STUDY} {BLUE_SERIES} {BLUE_SOP}", url=url)
    assert one.returncode == 0, one.stderr
    (item,) = json.loads(one.stdout)
    assert item["00080018"]["Value"] == [BLUE_SOP]

    blue = next(p for p in seed_files if p.name == "blue-circle.dcm")
    target = tmp_path / "blue.dcm"
    instance = run_cli(
        f"retrieve instance {STUDY} {BLUE_SERIES} {BLUE_SOP} --out", target, url=url
    )
    assert instance.returncode == 0, instance.stderr
    assert target.read_bytes() == blue.read_bytes()
    assert not list(tmp_path.glob(".*.partial"))

    into_folder = run_cli(
        f"retrieve instance {STUDY} {BLUE_SERIES} {BLUE_SOP} --out", tmp_path, url=url
    )
    assert into_folder.returncode == 0, into_folder.stderr
    assert (tmp_path / f"{BLUE_SOP}.dcm").read_bytes() == blue.read_bytes()

    frames_dir = tmp_path / "frames"
    frames = run_cli(
        f"retrieve frames {STUDY} {BLUE_SERIES} {BLUE_SOP} --frames 1 --out", frames_dir, url=url
    )
    assert frames.returncode == 0, frames.stderr
    frame = frames_dir / "frame-1.raw"
    assert frame.stat().st_size == 979 * 985 * 3  # Rows x Columns x RGB
    assert str(frame) in frames.stdout


def test_retrieve_of_a_missing_instance_is_one_error_line(
    seeded_orthanc: OrthancServer, tmp_path: Path
) -> None:
    target = tmp_path / "x.dcm"
    result = run_cli(
        f"retrieve instance {STUDY} {BLUE_SERIES} 1.2.3 --out",
        target,
        url=seeded_orthanc.dicomweb_url,
    )
    assert result.returncode == 1
    assert "404" in assert_one_error_line(result.stderr)
    assert not target.exists()


def test_delete_on_orthanc_is_one_error_line(seeded_orthanc: OrthancServer) -> None:
    result = run_cli(f"delete {STUDY}", url=seeded_orthanc.dicomweb_url)
    assert result.returncode == 1
    line = assert_one_error_line(result.stderr)
    assert "405" in line and "does not support DELETE" in line
    assert result.stdout == ""

    verbose = run_cli(f"-v delete {STUDY}", url=seeded_orthanc.dicomweb_url)
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "MethodNotAllowedError" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: 405 ")
    # -v also logs what the command does.
    assert "DEBUG dicomweb_async.cli: command delete" in verbose.stderr


def test_basic_auth_with_the_password_from_the_environment(orthanc_basic: OrthancServer) -> None:
    url = orthanc_basic.dicomweb_url
    user, password = orthanc_basic.auth or ("", "")
    ok = run_cli(
        f"--user {user} --password-env ORTHANC_PW search studies",
        url=url,
        env={"ORTHANC_PW": password},
    )
    assert ok.returncode == 0, ok.stderr
    refused = run_cli("search studies", url=url)
    assert refused.returncode == 1
    assert "401" in assert_one_error_line(refused.stderr)


# -- errors that need no server ---------------------------------------------------------------


def test_unreachable_server_is_one_error_line() -> None:
    result = run_cli("search studies", url=f"http://127.0.0.1:{closed_port()}/dicom-web")
    assert result.returncode == 1
    assert "127.0.0.1" in assert_one_error_line(result.stderr)


def test_missing_url_exits_2() -> None:
    result = run_cli("search studies")
    assert result.returncode == 2
    assert "DICOMWEB_URL" in result.stderr
    assert "Traceback" not in result.stderr


# -- against the loopback server --------------------------------------------------------------


def test_unusable_journal_is_one_error_line(
    loopback: LoopbackServer, good_folder: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "a-folder"
    journal.mkdir()
    result = run_cli("upload", good_folder, "--journal", journal, url=loopback.url)
    assert result.returncode == 1
    assert "a-folder" in assert_one_error_line(result.stderr)
    assert loopback.requests == []


def test_upload_and_download_with_a_bearer_token(
    loopback: LoopbackServer, good_folder: Path, tmp_path: Path
) -> None:
    loopback.require_auth(f"Bearer {SECRET}")
    up = run_cli(
        "--token-env MY_TOKEN -v upload", good_folder, url=loopback.url, env={"MY_TOKEN": SECRET}
    )
    assert up.returncode == 0, up.stderr
    assert counts(up.stdout)["stored"] == 3
    assert "auth bearer token" in up.stderr
    # Connection options after the command work too.
    out = tmp_path / "out"
    down = run_cli(f"download {STUDY} --url {loopback.url} --token {SECRET} --out", out)
    assert down.returncode == 0, down.stderr
    assert len(list(out.rglob("*.dcm"))) == 3
    for result in (up, down):
        assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "auth",
    [
        f"--token {SECRET}",
        f"--token={SECRET}",
        f"--user someone --password {PASSWORD}",
        "--user someone --password-env PW",
    ],
)
def test_secrets_never_appear_even_on_401_with_verbose(
    loopback: LoopbackServer, auth: str
) -> None:
    loopback.require_auth("Bearer the-right-one")
    result = run_cli(f"-v {auth} search studies", url=loopback.url, env={"PW": PASSWORD})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert result.stderr.strip().splitlines()[-1].startswith("error: 401 ")
    assert "Traceback" in result.stderr  # -v shows it, still without the secret
    assert SECRET not in output and PASSWORD not in output
    assert "c29tZW9uZT" not in output  # base64 of "someone:", as in a Basic header


def test_a_password_in_the_url_is_never_shown(loopback: LoopbackServer) -> None:
    loopback.require_auth("Bearer the-right-one")
    url = loopback.url.replace("http://", f"http://someone:{PASSWORD}@")
    result = run_cli("-v search studies", url=url)
    assert result.returncode == 1
    assert PASSWORD not in result.stdout + result.stderr


def test_failed_uploads_list_the_server_reason(
    loopback: LoopbackServer, good_folder: Path
) -> None:
    loopback.fail_next(10, status=500, retry_after=None, body=b"disk full", method="POST")
    result = run_cli("upload --concurrency 2", good_folder, url=loopback.url)
    assert result.returncode == 1, result.stderr
    assert counts(result.stdout)["failed"] == 3
    assert "500" in result.stdout and "disk full" in result.stdout


def test_max_attempts_bounds_the_tries(loopback: LoopbackServer, good_folder: Path) -> None:
    loopback.fail_next(4, status=503, retry_after=0, method="POST")
    once = run_cli("upload --concurrency 1 --max-attempts 1", good_folder, url=loopback.url)
    assert once.returncode == 1, once.stderr
    assert counts(once.stdout)["failed"] == 3
    # The default: the fourth 503 is retried and everything goes up.
    again = run_cli("upload --concurrency 1", good_folder, url=loopback.url)
    assert again.returncode == 0, again.stderr
    assert counts(again.stdout)["stored"] == 3
    assert [r.status for r in loopback.requests if r.method == "POST"] == [503] * 4 + [200] * 3


def test_copy_between_two_servers_with_a_token_for_each(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.4430001"
    with (
        LoopbackServer(storage_dir=tmp_path / "a") as source,
        LoopbackServer(storage_dir=tmp_path / "b") as destination,
    ):
        source.add_synthetic_study(study, 5, 32 * 1024, series_per_study=2)
        source.require_auth("Bearer source-token")
        destination.require_auth("Bearer destination-token")
        env = {"SRC_TOKEN": "source-token", "DST_TOKEN": "destination-token"}
        command = (
            f"copy --from {source.url} --to {destination.url} {study} "
            "--from-token-env SRC_TOKEN --to-token-env DST_TOKEN --verify"
        )
        result = run_cli(command, env=env)
        assert result.returncode == 0, result.stderr
        assert counts(result.stdout)["copied"] == 5
        assert "verify: the study matches" in result.stdout
        assert "source-token" not in result.stdout + result.stderr
        for sop in [i.sop_uid for i in source.instances(study)]:
            copied = destination.get_instance(sop)
            assert copied is not None and copied.sha256 == source.get_instance(sop).sha256  # type: ignore[union-attr]
        # The destination refuses the source's token: every instance fails, exit 1.
        env["DST_TOKEN"] = "source-token"
        failed = run_cli(command.replace(" --verify", " --no-skip-existing"), env=env)
        assert failed.returncode == 1
        assert "401" in failed.stdout + failed.stderr


def test_ctrl_c_exits_130_with_one_line(tmp_path: Path, good_folder: Path) -> None:
    journal = tmp_path / "journal"
    with LoopbackServer(storage_dir=tmp_path / "store", latency=0.5) as server:
        argv = ["--url", server.url, "-q", "upload", str(good_folder), "--concurrency", "1"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomweb_async", *argv, "--journal", str(journal)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted; re-run with the same --journal to resume"]
    assert out == ""
    # Every line of the journal is whole, so a re-run can resume from it.
    for line in journal.read_text().splitlines():
        assert json.loads(line)["status"] == "stored"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a Linux pty")
def test_progress_bar_on_a_terminal(loopback: LoopbackServer, good_folder: Path) -> None:
    import pty

    loopback.latency = 0.1
    master, slave = pty.openpty()
    argv = ["--url", loopback.url, "upload", str(good_folder), "--concurrency", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomweb_async", *argv],
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    drawn = b""
    try:
        while select.select([master], [], [], 30)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    text = drawn.decode()
    assert text.startswith("\rupload [")
    assert text.count("\r") >= 3
    assert "3/3 files" in text
    assert counts(out)["stored"] == 3


# -- sharded over a local Dask cluster or Ray ---------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("cluster", "engine"), [("--workers 2", "distributed"), ("--ray --workers 2", "ray")]
)
def test_upload_and_download_over_a_local_cluster(
    loopback: LoopbackServer, good_folder: Path, tmp_path: Path, cluster: str, engine: str
) -> None:
    pytest.importorskip(engine)
    loopback.require_auth(f"Bearer {SECRET}")
    journals = tmp_path / "journals"
    up = run_cli(
        f"upload {cluster} --concurrency 4 --token {SECRET} --journal",
        journals,
        good_folder,
        url=loopback.url,
        timeout=150,
    )
    assert up.returncode == 0, up.stderr
    assert counts(up.stdout)["stored"] == 3
    assert len(list(journals.glob("*/report.json"))) >= 1  # per-shard journals and reports
    assert loopback.max_in_flight <= 4
    out = tmp_path / "out"
    down = run_cli(
        f"download {STUDY} {cluster} --token-env MY_TOKEN --out",
        out,
        url=loopback.url,
        env={"MY_TOKEN": SECRET},
        timeout=150,
    )
    assert down.returncode == 0, down.stderr
    assert len(list(out.rglob("*.dcm"))) == 3
    for result in (up, down):
        assert SECRET not in result.stdout + result.stderr


def test_cluster_options_refuse_what_workers_cannot_get(loopback: LoopbackServer) -> None:
    pytest.importorskip("distributed")
    basic = run_cli("upload --workers 2 --user u --password p .", url=loopback.url)
    assert basic.returncode == 2 and "bearer token" in basic.stderr
    remote = run_cli(f"upload --scheduler tcp://127.0.0.1:1 --token {SECRET} .", url=loopback.url)
    assert remote.returncode == 2 and "--token-env" in remote.stderr
    both = run_cli("upload --workers 2 --scheduler tcp://127.0.0.1:1 .", url=loopback.url)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_ray_options_refuse_what_they_cannot_do(loopback: LoopbackServer) -> None:
    pytest.importorskip("ray")
    remote = run_cli(f"upload --ray ray://127.0.0.1:1 --token {SECRET} .", url=loopback.url)
    assert remote.returncode == 2 and "--token-env" in remote.stderr
    assert SECRET not in remote.stderr
    both = run_cli("upload --ray ray://127.0.0.1:1 --workers 2 .", url=loopback.url)
    assert both.returncode == 2 and "does not combine with --ray ADDRESS" in both.stderr
    dask = run_cli("upload --ray --scheduler tcp://127.0.0.1:1 .", url=loopback.url)
    assert dask.returncode == 2 and "does not combine with --ray" in dask.stderr
    basic = run_cli("upload --ray --user u --password p .", url=loopback.url)
    assert basic.returncode == 2 and "bearer token" in basic.stderr
