"""Download one study (default 512 x 2 MiB = 1 GiB) from the loopback server, case by case.

Run from the repository root::

    python -m benchmarks.bench_download                      # 512 x 2 MiB, 3 runs per case
    python -m benchmarks.bench_download --count 64 --repeat 1 --out-dir /dev/shm
    python -m benchmarks.bench_download --peers-python .venv-peers/bin/python

Each run is a fresh Python process, so the peak RSS in the table is that case's own. The
dicomweb-client, requests and aiohttp cases run in ``--peers-python`` when it is given.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from benchmarks import _common as common
from benchmarks._common import Outcome, Spec

STUDY_UID = "1.2.826.0.1.3680043.8.498.7700123"
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MODULE = "benchmarks.bench_download"

CASES = {
    "a": "(a) dicomweb-async download_study -> files",
    "b": "(b) dicomweb-async stream_study, count bytes",
    "c": "(c) dicomweb-async iter_study -> Datasets",
    "d": "(d) dicomweb-client retrieve_study (in memory)",
    "e": "(e) dicomweb-client iter_study",
    "i": "(i) dicomweb-client iter_study + dcmwrite -> files",
    "f": "(f) tutorial: requests + MultipartDecoder -> files",
    "g": "(g) bare httpx stream, aiter_raw -> one file",
    "j": "(j) bare aiohttp, iter_any -> one file",
    "h": "(h) curl -o one file",
}
# Ratio columns of the table: name -> case.
BASELINES = {"bare httpx": "g", "bare aiohttp": "j"}
# Cases that take `--engine`, and cases that run in `--peers-python`.
ASYNC_CLIENT = {"a", "b", "c"}
PEERS = {"d", "e", "f", "i", "j"}
# The family of each case, whose modules are imported before its clock starts (as in the
# other benchmarks); curl imports nothing.
FAMILIES = {
    "a": "dicomweb-async",
    "b": "dicomweb-async",
    "c": "dicomweb-async",
    "d": "dicomweb-client",
    "e": "dicomweb-client",
    "i": "dicomweb-client",
    "f": "tutorial",
    "g": "httpx",
    "j": "aiohttp",
}


def _study_url(spec: Spec) -> str:
    return f"{spec['url']}/studies/{spec['study']}"


def case_download_study(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, int]:
        async with AsyncDICOMwebClient(spec["url"], **common.client_options(spec)) as client:
            saved = await client.download_study(spec["study"], spec["out"])
        return len(saved), sum(item.size for item in saved)

    return common.timed(lambda: asyncio.run(main()))


def case_stream_study(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, int]:
        instances = received = 0
        async with (
            AsyncDICOMwebClient(spec["url"], **common.client_options(spec)) as client,
            client.stream_study(spec["study"]) as parts,
        ):
            async for part in parts:
                instances += 1
                async for chunk in part.aiter_bytes():
                    received += len(chunk)
        return instances, received

    return common.timed(lambda: asyncio.run(main()))


def case_iter_study(spec: Spec) -> Outcome:
    from dicomweb_async import AsyncDICOMwebClient

    async def main() -> tuple[int, None]:
        instances = 0
        async with AsyncDICOMwebClient(spec["url"], **common.client_options(spec)) as client:
            async for _dataset in client.iter_study(spec["study"]):
                instances += 1
        return instances, None

    return common.timed(lambda: asyncio.run(main()))


def case_dwc_retrieve(spec: Spec) -> Outcome:
    from dicomweb_client import DICOMwebClient

    def main() -> tuple[int, None]:
        datasets = DICOMwebClient(spec["url"]).retrieve_study(spec["study"])
        return len(datasets), None

    return common.timed(main)


def case_dwc_iter(spec: Spec) -> Outcome:
    from dicomweb_client import DICOMwebClient

    def main() -> tuple[int, None]:
        instances = 0
        for _dataset in DICOMwebClient(spec["url"]).iter_study(spec["study"]):
            instances += 1
        return instances, None

    return common.timed(main)


def case_dwc_iter_write(spec: Spec) -> Outcome:
    import pydicom
    from dicomweb_client import DICOMwebClient

    out = Path(spec["out"])

    def main() -> tuple[int, int]:
        instances = written = 0
        folders: set[Path] = set()
        for dataset in DICOMwebClient(spec["url"]).iter_study(spec["study"]):
            # The layout download_study writes: <study>/<series>/<sop>.dcm
            folder = out / dataset.StudyInstanceUID / dataset.SeriesInstanceUID
            if folder not in folders:
                folder.mkdir(parents=True, exist_ok=True)
                folders.add(folder)
            with open(folder / f"{dataset.SOPInstanceUID}.dcm", "wb") as fh:
                pydicom.dcmwrite(fh, dataset)
                written += fh.tell()
            instances += 1
        return instances, written

    return common.timed(main)


def case_tutorial(spec: Spec) -> Outcome:
    import requests
    from requests_toolbelt import MultipartDecoder

    out = Path(spec["out"])

    def main() -> tuple[int, int]:
        out.mkdir(parents=True, exist_ok=True)
        client = requests.session()
        response = client.get(_study_url(spec), headers={"Accept": ACCEPT})
        response.raise_for_status()
        decoder = MultipartDecoder.from_response(response)
        written = 0
        for index, part in enumerate(decoder.parts):
            with open(out / f"part-{index:05d}.dcm", "wb") as fh:
                written += fh.write(part.content)
        return len(decoder.parts), written

    return common.timed(main)


def case_bare_httpx(spec: Spec) -> Outcome:
    import httpx

    async def main(fh: BinaryIO) -> tuple[None, int]:
        received = 0
        async with (
            httpx.AsyncClient(timeout=60.0) as client,
            client.stream("GET", _study_url(spec), headers={"Accept": ACCEPT}) as response,
        ):
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                fh.write(chunk)
                received += len(chunk)
        return None, received

    def run() -> tuple[None, int]:
        Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
        with open(spec["out"], "wb") as fh:
            return asyncio.run(main(fh))

    return common.timed(run)


def case_bare_aiohttp(spec: Spec) -> Outcome:
    import aiohttp

    async def main(fh: BinaryIO) -> tuple[None, int]:
        received = 0
        timeout = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.get(_study_url(spec), headers={"Accept": ACCEPT}) as response,
        ):
            response.raise_for_status()
            async for chunk in response.content.iter_any():
                fh.write(chunk)
                received += len(chunk)
        return None, received

    def run() -> tuple[None, int]:
        Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
        with open(spec["out"], "wb") as fh:
            return asyncio.run(main(fh))

    return common.timed(run)


def case_curl(spec: Spec) -> Outcome:
    out = Path(spec["out"])
    peak: list[float | None] = []

    def main() -> tuple[None, int]:
        out.parent.mkdir(parents=True, exist_ok=True)
        command = ["curl", "-s", "-f", "-o", str(out), "-H", f"Accept: {ACCEPT}"]
        peak.append(common.run_program([*command, _study_url(spec)])[1])
        return None, out.stat().st_size

    outcome = common.timed(main)
    outcome.rss_of_children = True
    outcome.rss_mib = peak[0]
    return outcome


CHILD_CASES: dict[str, Callable[[Spec], Outcome]] = {
    "a": case_download_study,
    "b": case_stream_study,
    "c": case_iter_study,
    "d": case_dwc_retrieve,
    "e": case_dwc_iter,
    "f": case_tutorial,
    "g": case_bare_httpx,
    "h": case_curl,
    "i": case_dwc_iter_write,
    "j": case_bare_aiohttp,
}
# Cases that write one file rather than a directory of instances.
SINGLE_FILE = {"g", "h", "j"}


def child_main(spec_json: str) -> int:
    """Run one case; its clocks start after the imports of its family and engine.

    dicomweb-async loads its engine (aiohttp on asyncio) at the first request; the bare
    aiohttp case imports aiohttp before its clock, so the client's engine is imported
    before the clock too, like every other case's libraries.
    """
    spec: Spec = json.loads(spec_json)
    key = spec["case"]
    imports = list(common.FAMILY_IMPORTS[FAMILIES[key]]) if key in FAMILIES else []
    if key in ASYNC_CLIENT and spec.get("engine", "auto") in ("auto", "aiohttp"):
        imports.append("aiohttp")
    return common.child_main(spec_json, CHILD_CASES, {key: imports})


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--framing",
        choices=["length", "close", "chunked"],
        default="length",
        help="how the server delimits the response (default length)",
    )
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)

    keys = common.selected(CASES, args.cases)
    plan = [(k, e) for k in keys for e in (args.engine if k in ASYNC_CLIENT else [None])]
    stats = {(k, e): common.CaseStats(common.with_engine(CASES[k], e)) for k, e in plan}
    total = args.count * args.size
    common.check_engines([e for _, e in plan])
    common.progress(common.environment(args.peers_python))
    synthetic = f"{STUDY_UID}:{args.count}:{args.size}"
    with (
        common.scratch_dir(args.out_dir) as scratch,
        common.loopback_server(
            "--synthetic", synthetic, "--framing", args.framing, "--hashing", "none"
        ) as url,
    ):
        runs = len(plan) * args.repeat
        done = 0
        for _ in range(args.repeat):
            for key, engine in plan:  # interleaved, so drift on a noisy machine hits every case
                target = scratch / f"case-{key}"
                out = target / "study.multipart" if key in SINGLE_FILE else target
                spec = {"case": key, "url": url, "study": STUDY_UID, "out": str(out)}
                if engine is not None:
                    spec["engine"] = engine
                python = args.peers_python if key in PEERS else None
                result = common.run_child(MODULE, spec, python)
                common.clear_dir(target)
                done += 1
                row = stats[key, engine]
                note = row.add(result, args.count, args.size)
                common.progress(f"[{done}/{runs}] {row.label}: {note}")
    title = (
        f"Download of {args.count} x {args.size / common.MIB:g} MiB "
        f"({total / common.MB:.0f} MB), framing={args.framing}, {args.repeat} runs, "
        f"out dir {args.out_dir or '/tmp'}"
    )
    baselines = {name: stats.get((key, None)) for name, key in BASELINES.items()}
    common.print_table(title, list(stats.values()), baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
