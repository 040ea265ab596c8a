"""Upload a folder of instances (default 512 x 2 MiB) one instance per request, case by case.

Run from the repository root::

    python -m benchmarks.bench_upload                        # 512 x 2 MiB, c=1 and c=16
    python -m benchmarks.bench_upload --count 64 --repeat 1 --out-dir /dev/shm
    python -m benchmarks.bench_upload --peers-python .venv-peers/bin/python

The files are written once into a scratch directory; every run is a fresh Python process
uploading all of them, ``--concurrency`` requests at a time. The dicomweb-client, requests
and aiohttp cases run in ``--peers-python`` when it is given.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from benchmarks._common import Outcome, Spec

STUDY_UID = "1.2.826.0.1.3680043.8.498.7700456"
RELATED = common.RELATED
DICOM_JSON = common.DICOM_JSON
MODULE = "benchmarks.bench_upload"
CURL_CASE = "e"
READ_SIZE = 1024 * 1024

CASES = {
    "a": "(a) dicomweb-async store_instances([path])",
    "b": "(b) tutorial: requests + hand-built body",
    "c": "(c) dicomweb-client store_instances([dcmread])",
    "d": "(d) bare httpx, body streamed from disk",
    "f": "(f) bare aiohttp, hand-built body",
    "e": "(e) curl --data-binary, one body repeated",
}
# Ratio columns of the tables: name -> case.
BASELINES = {"bare httpx": "d", "bare aiohttp": "f"}
# Cases that take `--engine`, and cases that run in `--peers-python`.
ASYNC_CLIENT = {"a"}
PEERS = {"b", "c", "f"}


def _in_threads(spec: Spec, upload: Callable[[Path], int]) -> tuple[int, None]:
    paths = common.upload_files(spec)
    with ThreadPoolExecutor(max_workers=spec["concurrency"]) as pool:
        return sum(pool.map(upload, paths)), None


def case_dicomweb_async(spec: Spec) -> Outcome:
    import anyio

    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, None]:
        paths = common.upload_files(spec)
        concurrency = spec["concurrency"]
        limiter = anyio.CapacityLimiter(concurrency)
        stored = 0

        async def one(path: Path) -> None:
            nonlocal stored
            async with limiter:
                result = await client.store_instances([path])
            stored += len(result.raise_for_failures().stored)

        async with (
            AsyncDICOMwebClient(
                spec["url"], max_connections=concurrency, **common.client_options(spec)
            ) as client,
            anyio.create_task_group() as tg,
        ):
            for path in paths:
                tg.start_soon(one, path)
        return stored, None

    return common.timed(lambda: asyncio.run(main()))


def case_tutorial(spec: Spec) -> Outcome:
    import requests
    from urllib3.filepost import choose_boundary, encode_multipart_formdata

    # As in the Azure DICOM service's Python tutorial: read the file, build the body with
    # urllib3's form-data encoder, relabel it multipart/related, POST it with requests.
    def encode_multipart_related(
        fields: dict[str, Any], boundary: str | None = None
    ) -> tuple[bytes, str]:
        if boundary is None:
            boundary = choose_boundary()
        body, _ = encode_multipart_formdata(fields, boundary)
        return body, f"multipart/related; boundary={boundary}"

    local = threading.local()
    url = f"{spec['url']}/studies"

    def upload(path: Path) -> int:
        if not hasattr(local, "session"):
            local.session = requests.session()
        with open(path, "rb") as reader:
            rawfile = reader.read()
        files = {"file": ("dicomfile", rawfile, "application/dicom")}
        body, content_type = encode_multipart_related(fields=files)
        headers = {"Accept": DICOM_JSON, "Content-Type": content_type}
        response = local.session.post(url, body, headers=headers)
        response.raise_for_status()
        return 1

    return common.timed(lambda: _in_threads(spec, upload))


def case_dicomweb_client(spec: Spec) -> Outcome:
    import pydicom
    from dicomweb_client import DICOMwebClient

    local = threading.local()

    def upload(path: Path) -> int:
        if not hasattr(local, "client"):
            local.client = DICOMwebClient(spec["url"])
        answer = local.client.store_instances([pydicom.dcmread(path)])
        return len(answer.get("ReferencedSOPSequence", []))

    return common.timed(lambda: _in_threads(spec, upload))


def case_bare_httpx(spec: Spec) -> Outcome:
    import anyio
    import httpx

    head, tail = common.multipart_head(), common.multipart_tail()
    url = f"{spec['url']}/studies"

    async def body(path: Path) -> AsyncIterator[bytes]:
        yield head
        async with await anyio.open_file(path, "rb") as f:
            while chunk := await f.read(READ_SIZE):
                yield chunk
        yield tail

    async def main() -> tuple[int, None]:
        concurrency = spec["concurrency"]
        limiter = anyio.CapacityLimiter(concurrency)
        limits = httpx.Limits(max_connections=concurrency)
        stored = 0

        async def one(path: Path, size: int) -> None:
            nonlocal stored
            headers = {
                "Accept": DICOM_JSON,
                "Content-Type": RELATED,
                "Content-Length": str(len(head) + size + len(tail)),
            }
            async with limiter:
                response = await client.post(url, content=body(path), headers=headers)
            response.raise_for_status()
            stored += 1

        async with (
            httpx.AsyncClient(timeout=60.0, limits=limits) as client,
            anyio.create_task_group() as tg,
        ):
            for path in common.upload_files(spec):
                tg.start_soon(one, path, path.stat().st_size)
        return stored, None

    return common.timed(lambda: asyncio.run(main()))


def case_curl(spec: Spec) -> Outcome:
    url = f"{spec['url']}/studies"
    count = len(common.upload_files(spec))
    command = [
        "curl",
        "-s",
        "-f",
        "-H",
        "Expect:",
        "-H",
        f"Content-Type: {RELATED}",
        "-H",
        f"Accept: {DICOM_JSON}",
        "--data-binary",
        f"@{spec['body']}",
        "-w",
        "%{http_code}\\n",
    ]
    for _ in range(count):
        command += [url, "-o", "/dev/null"]

    peak: list[float | None] = []

    def main() -> tuple[int, None]:
        done, rss = common.run_program(command, capture=True)
        peak.append(rss)
        return done.stdout.split().count("200"), None

    outcome = common.timed(main)
    outcome.rss_of_children = True
    outcome.rss_mib = peak[0]
    return outcome


CHILD_CASES: dict[str, Callable[[Spec], Outcome]] = {
    "a": case_dicomweb_async,
    "b": case_tutorial,
    "c": case_dicomweb_client,
    "d": case_bare_httpx,
    "e": case_curl,
    "f": common.upload_aiohttp,
}


def _prepare(scratch: Path, count: int, size: int) -> tuple[Path, Path]:
    from tests.loopback_server import write_instance_files

    files = scratch / "instances"
    paths = write_instance_files(files, count, size, study_uid=STUDY_UID)
    body = scratch / "curl-body.multipart"
    body.write_bytes(common.multipart_head() + paths[0].read_bytes() + common.multipart_tail())
    return files, body


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        default="1,16",
        help="comma-separated request concurrencies (default 1,16); curl runs at 1 only",
    )
    args = parser.parse_args(argv)
    if args.child is not None:
        # The client and its engine load before the clock, as the peers load theirs.
        return common.child_main(
            args.child, CHILD_CASES, {"a": common.FAMILY_IMPORTS["dicomweb-async"]}
        )

    keys = common.selected(CASES, args.cases)
    levels = [int(level) for level in args.concurrency.split(",")]
    plan = [
        (c, k, e)
        for c in levels
        for k in keys
        if k != CURL_CASE or c == 1
        for e in (args.engine if k in ASYNC_CLIENT else [None])
    ]
    stats = {(c, k, e): common.CaseStats(common.with_engine(CASES[k], e)) for c, k, e in plan}
    common.check_engines([e for _, _, e in plan])
    common.progress(common.environment(args.peers_python))
    with common.scratch_dir(args.out_dir) as scratch:
        files, body = _prepare(scratch, args.count, args.size)
        with common.loopback_server("--hashing", "none") as url:
            runs = len(plan) * args.repeat
            done = 0
            for _ in range(args.repeat):
                for concurrency, key, engine in plan:
                    spec = {
                        "case": key,
                        "url": url,
                        "files": str(files),
                        "body": str(body),
                        "concurrency": concurrency,
                    }
                    if engine is not None:
                        spec["engine"] = engine
                    python = args.peers_python if key in PEERS else None
                    result = common.run_child(MODULE, spec, python)
                    done += 1
                    row = stats[concurrency, key, engine]
                    note = row.add(result, args.count, args.size)
                    common.progress(f"[{done}/{runs}] c={concurrency} {row.label}: {note}")
    total = args.count * args.size
    for concurrency in levels:
        rows = [stats[c, k, e] for c, k, e in plan if c == concurrency]
        title = (
            f"Upload of {args.count} x {args.size / common.MIB:g} MiB "
            f"({total / common.MB:.0f} MB), one instance per request, "
            f"concurrency {concurrency}, {args.repeat} runs, out dir {args.out_dir or '/tmp'}"
        )
        baselines = {name: stats.get((concurrency, key, None)) for name, key in BASELINES.items()}
        common.print_table(title, rows, baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
