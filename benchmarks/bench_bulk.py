"""Bulk upload and download of many small instances over a link with latency, case by case.

Run from the repository root::

    python -m benchmarks.bench_bulk                       # 2,000 x 512 KiB, 20 ms, 3 runs
    python -m benchmarks.bench_bulk --count 200 --repeat 1 --orthanc-count 50   # quick check
    python -m benchmarks.bench_bulk --cases a,b,c,d,m     # uploads only
    python -m benchmarks.bench_bulk --peers-python .venv-peers/bin/python

The loopback server waits ``--latency`` seconds before every response, so one request
costs at least that long and only concurrency can hide it. Cases (a)-(d) and (m) upload a
folder of files, (e)-(k) download a study of the same size, (l) uploads to a real Orthanc
server (no injected latency). Every run is a fresh Python process, so each peak RSS is that
case's own; the dicomweb-client, requests and aiohttp cases run in ``--peers-python`` when
it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _common as common
from benchmarks import bench_upload
from benchmarks._common import Outcome, Spec

MODULE = "benchmarks.bench_bulk"
UPLOAD_STUDY = "1.2.826.0.1.3680043.8.498.7700789"
ORTHANC_STUDY = "1.2.826.0.1.3680043.8.498.7700790"
ONE_SERIES_STUDY = "1.2.826.0.1.3680043.8.498.7700791"
MANY_SERIES_STUDY = "1.2.826.0.1.3680043.8.498.7700792"
DICOM_JSON = "application/dicom+json"
QIDO_PAGES = 2  # a full first page, then the empty page that ends the paging

CASES = {
    "a": "(a) dicomweb-async store_folder",
    "b": "(b) dicomweb-client store_instances, sequential",
    "c": "(c) dicomweb-client store_instances, threads",
    "d": "(d) tutorial: requests + hand-built body, threads",
    "m": "(m) bare aiohttp, hand-built body",
    "e": "(e) dicomweb-async download_studies, 1 series",
    "f": "(f) dicomweb-async download_studies, {series} series",
    "g": "(g) dicomweb-async download_study, 1 series",
    "h": "(h) dicomweb-async download_study, {series} series",
    "i": "(i) dicomweb-async download_series, per instance",
    "j": "(j) dicomweb-client iter_study (Datasets)",
    "k": "(k) dicomweb-client retrieve_instance, threads",
    "l": "(l) dicomweb-async store_folder -> Orthanc",
}
UPLOAD = ("a", "b", "c", "d", "m")
DOWNLOAD = ("e", "f", "g", "h", "i", "j", "k")
ORTHANC = ("l",)
# Cases run at every level of --concurrency; the others at their own natural concurrency.
SWEPT = {"a", "e", "f", "g", "h", "i"}
# Modules a case needs, imported before its CPU clock starts, per family of cases.
IMPORTS = common.FAMILY_IMPORTS
# Families that run in `--peers-python`; the dicomweb-async cases take `--engine`.
PEERS = common.PEER_FAMILIES


# --------------------------------------------------------------------------------------------
# Child side: one case per process


def _instances(spec: Spec) -> list[tuple[str, str]]:
    """(series, sop) pairs listed by the parent with QIDO-RS before the runs."""
    pairs = json.loads(Path(spec["instances"]).read_text(encoding="utf-8"))
    return [(str(series), str(sop)) for series, sop in pairs]


def case_store_folder(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, int]:
        concurrency = spec["concurrency"]
        async with AsyncDICOMwebClient(
            spec["url"], max_connections=concurrency, **common.client_options(spec)
        ) as client:
            report = await client.store_folder(spec["files"], concurrency=concurrency)
        if report.failed:
            first = report.failed[0]
            print(f"{len(report.failed)} failed; first: {first.message}", file=sys.stderr)
        return len(report.stored), report.bytes_stored

    return common.timed(lambda: asyncio.run(main()))


def case_dwc_sequential(spec: Spec) -> Outcome:
    import pydicom
    from dicomweb_client import DICOMwebClient

    paths = common.upload_files(spec)

    def main() -> tuple[int, None]:
        client = DICOMwebClient(spec["url"])
        stored = 0
        for path in paths:
            answer = client.store_instances([pydicom.dcmread(path)])
            stored += len(answer.get("ReferencedSOPSequence", []))
        return stored, None

    return common.timed(main)


def case_dwc_threads(spec: Spec) -> Outcome:
    # bench_upload's case (c): one dicomweb-client per thread, a dcmread'd file per request.
    return bench_upload.case_dicomweb_client(spec)


def case_tutorial_threads(spec: Spec) -> Outcome:
    # bench_upload's case (b): requests, urllib3-built multipart body, a session per thread.
    return bench_upload.case_tutorial(spec)


def case_download_studies(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, int]:
        concurrency = spec["concurrency"]
        async with AsyncDICOMwebClient(
            spec["url"], max_connections=concurrency, **common.client_options(spec)
        ) as client:
            report = await client.download_studies(
                [spec["study"]], spec["out"], concurrency=concurrency
            )
        if report.failed:
            first = report.failed[0]
            print(f"{len(report.failed)} failed; first: {first.message}", file=sys.stderr)
        return len(report.downloaded), report.bytes_downloaded

    return common.timed(lambda: asyncio.run(main()))


def case_download_study(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, int]:
        concurrency = spec["concurrency"]
        async with AsyncDICOMwebClient(
            spec["url"], max_connections=concurrency, **common.client_options(spec)
        ) as client:
            saved = await client.download_study(
                spec["study"], spec["out"], concurrency=concurrency
            )
        return len(saved), sum(item.size for item in saved)

    return common.timed(lambda: asyncio.run(main()))


def case_download_series(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    series = _instances(spec)[0][0]

    async def main() -> tuple[int, int]:
        concurrency = spec["concurrency"]
        async with AsyncDICOMwebClient(
            spec["url"], max_connections=concurrency, **common.client_options(spec)
        ) as client:
            saved = await client.download_series(
                spec["study"], series, spec["out"], concurrency=concurrency
            )
        return len(saved), sum(item.size for item in saved)

    return common.timed(lambda: asyncio.run(main()))


def case_dwc_iter_study(spec: Spec) -> Outcome:
    from dicomweb_client import DICOMwebClient

    def main() -> tuple[int, None]:
        instances = 0
        for _dataset in DICOMwebClient(spec["url"]).iter_study(spec["study"]):
            instances += 1
        return instances, None

    return common.timed(main)


def case_dwc_retrieve_threads(spec: Spec) -> Outcome:
    from dicomweb_client import DICOMwebClient

    pairs = _instances(spec)
    local = threading.local()
    study = spec["study"]

    def fetch(pair: tuple[str, str]) -> int:
        if not hasattr(local, "client"):
            local.client = DICOMwebClient(spec["url"])
        local.client.retrieve_instance(study, pair[0], pair[1])
        return 1

    def main() -> tuple[int, None]:
        with ThreadPoolExecutor(max_workers=spec["concurrency"]) as pool:
            return sum(pool.map(fetch, pairs)), None

    return common.timed(main)


CHILD_CASES: dict[str, tuple[Callable[[Spec], Outcome], str]] = {
    "a": (case_store_folder, "dicomweb-async"),
    "b": (case_dwc_sequential, "dicomweb-client"),
    "c": (case_dwc_threads, "dicomweb-client"),
    "d": (case_tutorial_threads, "tutorial"),
    "e": (case_download_studies, "dicomweb-async"),
    "f": (case_download_studies, "dicomweb-async"),
    "g": (case_download_study, "dicomweb-async"),
    "h": (case_download_study, "dicomweb-async"),
    "i": (case_download_series, "dicomweb-async"),
    "j": (case_dwc_iter_study, "dicomweb-client"),
    "k": (case_dwc_retrieve_threads, "dicomweb-client"),
    "l": (case_store_folder, "dicomweb-async"),
    "m": (common.upload_aiohttp, "aiohttp"),
}


def child_main(spec_json: str) -> int:
    """Run one case; its CPU clock starts after the imports of its family."""
    cases = {key: run for key, (run, _) in CHILD_CASES.items()}
    imports = {key: IMPORTS[family] for key, (_, family) in CHILD_CASES.items()}
    return common.child_main(spec_json, cases, imports)


def _engines(key: str, args: argparse.Namespace) -> list[str | None]:
    """The engines a case runs with: every ``--engine`` for dicomweb-async, else none."""
    engines: list[str | None] = args.engine
    return engines if CHILD_CASES[key][1] == "dicomweb-async" else [None]


def _python(key: str, args: argparse.Namespace) -> str | None:
    peers: str | None = args.peers_python
    return peers if CHILD_CASES[key][1] in PEERS else None


# --------------------------------------------------------------------------------------------
# Parent side: plan, run, tabulate


@dataclass
class Row:
    """One line of a result table: a case at one concurrency."""

    key: str
    label: str
    concurrency: int
    count: int  # instances the case moves per run
    spec: Spec
    serial: int = 0  # requests that must finish before the parallel ones start
    parallel: int = 0  # requests spread over `concurrency` connections
    python: str | None = None  # interpreter of the case (None: this one)
    stats: common.CaseStats = field(init=False)
    server_cpu: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stats = common.CaseStats(self.label)

    @property
    def requests(self) -> str:
        if self.serial and self.parallel:
            return f"{self.serial}+{self.parallel}"
        return str(self.serial + self.parallel)

    def floor_seconds(self, latency: float, waves: bool) -> float:
        """Time spent waiting for the server's latency alone, with perfect overlap."""
        if waves:
            return latency * (self.serial + math.ceil(self.parallel / self.concurrency))
        return latency * (self.serial + self.parallel / self.concurrency)


def _med(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else ""


def _speed_cells(row: Row, size: int) -> list[str] | None:
    """median MB/s, min..max, instances/s, peak RSS; None when every run failed."""
    stats = row.stats
    if stats.median is None:
        return None
    spread = f"{min(stats.speeds):.0f}..{max(stats.speeds):.0f}"
    if stats.errors:
        spread += f" ({len(stats.errors)} failed)"
    per_second = stats.median * common.MB / size
    return [f"{stats.median:.0f}", spread, f"{per_second:.0f}", f"{max(stats.rss):.0f}"]


def _failed_cells(row: Row, width: int) -> list[str]:
    message = row.stats.errors[0][:60] if row.stats.errors else "not run"
    return ["failed", message, *([""] * (width - 2))]


def print_latency_table(
    title: str,
    rows: Sequence[Row],
    size: int,
    latency: float,
    *,
    download: bool,
    ceiling: Row | None = None,
) -> None:
    """The latency table; with ``ceiling``, a last column of ratios to its median."""
    first = "requests" if download else "files"
    header = [
        "case",
        "c",
        first,
        "median MB/s",
        "min..max MB/s",
        "inst/s",
        "peak RSS MiB",
        "CPU s",
        "floor MB/s",
        "% of floor",
    ]
    if ceiling is not None:
        header.append(f"vs bare aiohttp c={ceiling.concurrency}")
    lines = []
    for row in rows:
        cells = [row.label, str(row.concurrency), row.requests if download else str(row.count)]
        speed = _speed_cells(row, size)
        if speed is None:
            lines.append([*cells, *_failed_cells(row, len(header) - 3)])
            continue
        floor = row.count * size / common.MB / row.floor_seconds(latency, waves=download)
        assert row.stats.median is not None
        share = f"{100 * row.stats.median / floor:.0f}%"
        lines.append([*cells, *speed, _med(row.stats.cpu), f"{floor:.0f}", share])
        if ceiling is not None:
            lines[-1].append(common.ratio(row.stats, ceiling.stats))
    common.print_rows(title, header, lines)


def print_orthanc_table(title: str, rows: Sequence[Row], size: int) -> None:
    header = (
        "case",
        "c",
        "median MB/s",
        "min..max MB/s",
        "inst/s",
        "peak RSS MiB",
        "client CPU s",
        "Orthanc CPU s",
    )
    lines = []
    for row in rows:
        cells = [row.label, str(row.concurrency)]
        speed = _speed_cells(row, size)
        if speed is None:
            lines.append([*cells, *_failed_cells(row, len(header) - 2)])
            continue
        lines.append([*cells, *speed, _med(row.stats.cpu), _med(row.server_cpu)])
    common.print_rows(title, header, lines)


def print_memory_table(title: str, rows: Sequence[Row], size: int) -> None:
    header = ("case", "c", "instances", "MB moved", "peak RSS MiB", "median MB/s")
    lines = []
    for row in rows:
        if row.stats.median is None:
            continue
        lines.append(
            [
                row.label,
                str(row.concurrency),
                str(row.count),
                f"{row.count * size / common.MB:.0f}",
                f"{max(row.stats.rss):.0f}",
                f"{row.stats.median:.0f}",
            ]
        )
    common.print_rows(title, header, lines)


def _run_rows(rows: Sequence[Row], repeat: int, size: int, between: Callable[[], None]) -> None:
    runs = len(rows) * repeat
    done = 0
    for _ in range(repeat):
        for row in rows:  # interleaved, so drift on a noisy machine hits every case
            result = common.run_child(MODULE, row.spec, row.python)
            between()
            done += 1
            note = row.stats.add(result, row.count, size)
            common.progress(f"[{done}/{runs}] c={row.concurrency} {row.label}: {note}")


# -- upload ------------------------------------------------------------------------------------


def plan_upload(keys: Sequence[str], args: argparse.Namespace, files: Path, url: str) -> list[Row]:
    rows: list[Row] = []
    sequential = min(args.sequential_count or args.count, args.count)
    for key in keys:
        levels = args.levels if key in SWEPT else [1 if key == "b" else args.threads]
        for level in levels:
            for engine in _engines(key, args):
                count = sequential if key == "b" else args.count
                label = common.with_engine(CASES[key], engine)
                if key == "b" and count < args.count:
                    label += f" ({count} of {args.count} files)"
                spec = {"case": key, "url": url, "files": str(files), "concurrency": level}
                if key == "b":
                    spec["limit"] = count
                if engine is not None:
                    spec["engine"] = engine
                row = Row(key, label, level, count, spec, parallel=count)
                row.python = _python(key, args)
                rows.append(row)
    return rows


def run_upload(keys: Sequence[str], args: argparse.Namespace, scratch: Path) -> list[Row]:
    from tests.loopback_server import write_instance_files

    files = scratch / "upload"
    common.progress(f"writing {args.count} x {args.size} bytes to {files}")
    write_instance_files(files, args.count, args.size, study_uid=UPLOAD_STUDY)
    server_args = ("--latency", str(args.latency), "--hashing", "none")
    with common.loopback_server(*server_args) as url:
        rows = plan_upload(keys, args, files, url)
        _run_rows(rows, args.repeat, args.size, lambda: None)
    common.clear_dir(files)
    total = args.count * args.size / common.MB
    title = (
        f"Upload of {args.count} x {args.size / 1024:g} KiB ({total:.0f} MB), one instance per "
        f"request, server latency {args.latency * 1000:g} ms, {args.repeat} runs"
    )
    ceiling = next((row for row in rows if row.key == "m"), None)
    print_latency_table(title, rows, args.size, args.latency, download=False, ceiling=ceiling)
    return rows


# -- download ----------------------------------------------------------------------------------


def _list_instances(url: str, study: str) -> list[tuple[str, str]]:
    import httpx

    answer = httpx.get(f"{url}/studies/{study}/instances", headers={"Accept": DICOM_JSON})
    answer.raise_for_status()
    return [(item["0020000E"]["Value"][0], item["00080018"]["Value"][0]) for item in answer.json()]


def _download_requests(key: str, level: int, count: int, series: int) -> tuple[int, int]:
    """(serial, parallel) requests of a download case, from the client's code paths.

    ``download_studies`` lists the study with QIDO-RS (two pages: the answer, then the
    empty page that ends the paging) and fetches every series whole. ``download_study`` and
    ``download_series`` send one WADO-RS request at concurrency 1; above it they list with
    QIDO-RS first, then fetch whole series (study) or single instances (series).
    """
    many = series if key in ("f", "h") else 1
    if key in ("e", "f"):
        return QIDO_PAGES, many
    if key in ("g", "h"):
        return (0, 1) if level == 1 else (QIDO_PAGES, many)
    if key == "i":
        return (0, 1) if level == 1 else (QIDO_PAGES, count)
    if key == "j":
        return 0, 1
    return 0, count  # k: the instance list is fetched before the clock starts


def run_download(keys: Sequence[str], args: argparse.Namespace, scratch: Path) -> list[Row]:
    synthetic = [
        f"{ONE_SERIES_STUDY}:{args.count}:{args.size}:1",
        f"{MANY_SERIES_STUDY}:{args.count}:{args.size}:{args.series}",
    ]
    server_args = ["--latency", str(args.latency), "--hashing", "none"]
    for text in synthetic:
        server_args += ["--synthetic", text]
    out = scratch / "download"
    listing = scratch / "instances.json"
    with common.loopback_server(*server_args) as url:
        listing.write_text(json.dumps(_list_instances(url, ONE_SERIES_STUDY)), encoding="utf-8")
        rows: list[Row] = []
        for key in keys:
            levels = args.levels if key in SWEPT else [1 if key == "j" else args.threads]
            for level, engine in ((c, e) for c in levels for e in _engines(key, args)):
                study = MANY_SERIES_STUDY if key in ("f", "h") else ONE_SERIES_STUDY
                spec = {
                    "case": key,
                    "url": url,
                    "study": study,
                    "out": str(out),
                    "instances": str(listing),
                    "concurrency": level,
                }
                if engine is not None:
                    spec["engine"] = engine
                serial, parallel = _download_requests(key, level, args.count, args.series)
                label = common.with_engine(CASES[key].format(series=args.series), engine)
                row = Row(key, label, level, args.count, spec, serial, parallel)
                row.python = _python(key, args)
                rows.append(row)
        _run_rows(rows, args.repeat, args.size, lambda: common.clear_dir(out))
    total = args.count * args.size / common.MB
    title = (
        f"Download of a study of {args.count} x {args.size / 1024:g} KiB ({total:.0f} MB), "
        f"server latency {args.latency * 1000:g} ms, {args.repeat} runs, "
        f"out dir {args.out_dir or '/tmp'}"
    )
    print_latency_table(title, rows, args.size, args.latency, download=True)
    return rows


# -- Orthanc -----------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_orthanc(args: argparse.Namespace, scratch: Path) -> list[Row]:
    from dicomweb_async.testing import OrthancNotAvailable, OrthancServer
    from tests.loopback_server import write_instance_files

    files = scratch / "orthanc"
    write_instance_files(files, args.orthanc_count, args.size, study_uid=ORTHANC_STUDY)
    rows: list[Row] = []
    try:
        with OrthancServer() as server:
            for level, engine in ((c, e) for c in args.orthanc_levels for e in args.engine):
                spec = {
                    "case": "l",
                    "url": server.dicomweb_url,
                    "files": str(files),
                    "concurrency": level,
                }
                if engine is not None:
                    spec["engine"] = engine
                label = common.with_engine(CASES["l"], engine)
                rows.append(Row("l", label, level, args.orthanc_count, spec))
            runs = len(rows) * args.repeat
            done = 0
            for _ in range(args.repeat):
                for row in rows:
                    server.reset()  # every run stores into an empty server
                    os.sync()
                    before = _cpu_seconds(server.pid)
                    result = common.run_child(MODULE, row.spec)
                    used = _cpu_seconds(server.pid) - before
                    done += 1
                    note = row.stats.add(result, row.count, args.size)
                    if not note.startswith("FAILED"):
                        row.server_cpu.append(used)
                    common.progress(f"[{done}/{runs}] c={row.concurrency} {row.label}: {note}")
            server.reset()
    except OrthancNotAvailable as exc:
        common.progress(f"skipping the Orthanc case: {exc}")
        return []
    finally:
        common.clear_dir(files)
    total = args.orthanc_count * args.size / common.MB
    title = (
        f"Upload to Orthanc of {args.orthanc_count} x {args.size / 1024:g} KiB "
        f"({total:.0f} MB), one instance per request, no injected latency, "
        f"{args.repeat} runs"
    )
    print_orthanc_table(title, rows, args.size)
    return rows


# --------------------------------------------------------------------------------------------
# Command line


def _levels(text: str) -> list[int]:
    levels = [int(piece) for piece in text.split(",") if piece.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,4,16,64")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="instances (default 2000)")
    parser.add_argument(
        "--size",
        type=common.parse_size,
        default=512 * 1024,
        help="bytes per instance (default 512k; k, m, g are binary suffixes)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where a scratch directory is made and removed again (default /tmp)",
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated case letters a-m (default: all)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.02, help="server latency in seconds (default 0.02)"
    )
    parser.add_argument(
        "--concurrency",
        dest="levels",
        type=_levels,
        default=[1, 4, 16, 64],
        help="concurrencies of the dicomweb-async cases (default 1,4,16,64)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=16,
        help="threads of the threaded peers, connections of bare aiohttp (default 16)",
    )
    parser.add_argument(
        "--sequential-count",
        type=int,
        default=0,
        help="files the sequential dicomweb-client case (b) uploads (default: all of them)",
    )
    parser.add_argument(
        "--series", type=int, default=64, help="series of the many-series study (default 64)"
    )
    parser.add_argument(
        "--orthanc-count",
        type=int,
        default=500,
        help="instances uploaded to Orthanc in case (l) (default 500)",
    )
    parser.add_argument(
        "--orthanc-concurrency",
        dest="orthanc_levels",
        type=_levels,
        default=[1, 4, 8],
        help="concurrencies of case (l) (default 1,4,8)",
    )
    common.add_run_options(parser)
    return parser


def _memory_rows(rows: Sequence[Row], level: int) -> Iterator[Row]:
    for row in rows:
        if row.key in SWEPT and row.concurrency == level:
            yield row


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)

    keys = common.selected(CASES, args.cases)
    async_keys = [k for k in keys if CHILD_CASES[k][1] == "dicomweb-async"]
    common.check_engines(args.engine if async_keys else [None])
    common.progress(common.environment(args.peers_python))
    done: list[Row] = []
    with common.scratch_dir(args.out_dir) as scratch:
        if upload := [key for key in keys if key in UPLOAD]:
            done += run_upload(upload, args, scratch)
        if download := [key for key in keys if key in DOWNLOAD]:
            done += run_download(download, args, scratch)
        if "l" in keys:
            run_orthanc(args, scratch)
    top = max(args.levels)
    memory = list(_memory_rows(done, top))
    if memory:
        title = f"Peak RSS of the dicomweb-async cases at concurrency {top}"
        print_memory_table(title, memory, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
