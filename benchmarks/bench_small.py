"""Store a folder of small instances (default 5,000 x 16 KiB) one per request, case by case.

Run from the repository root::

    python -m benchmarks.bench_small --peers-python .venv-peers/bin/python
    python -m benchmarks.bench_small --count 500 --repeat 1      # quick check
    python -m benchmarks.bench_small --concurrency 1,16 --latency 0.02

With instances this small the bytes cost little and the work per request is what counts:
the table shows instances per second and CPU milliseconds per instance. Every run is a
fresh Python process, so each peak RSS and CPU time is that case's own; the
dicomweb-client, requests and aiohttp cases run in ``--peers-python`` when it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import _common as common
from benchmarks import bench_upload
from benchmarks._common import Outcome, Spec

MODULE = "benchmarks.bench_small"
STUDY_UID = "1.2.826.0.1.3680043.8.498.7700801"
CEILING = "d"

CASES = {
    "a": "(a) dicomweb-async store_folder",
    "b": "(b) tutorial: requests + hand-built body, threads",
    "c": "(c) dicomweb-client store_instances, threads",
    "d": "(d) bare aiohttp, hand-built body",
    "e": "(e) bare httpx, hand-built body",
}


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


# case -> (function, family); the family decides the imports and the interpreter.
CHILD_CASES: dict[str, tuple[Callable[[Spec], Outcome], str]] = {
    "a": (case_store_folder, "dicomweb-async"),
    "b": (bench_upload.case_tutorial, "tutorial"),
    "c": (bench_upload.case_dicomweb_client, "dicomweb-client"),
    "d": (common.upload_aiohttp, "aiohttp"),
    "e": (common.upload_httpx_bytes, "httpx"),
}


def child_main(spec_json: str) -> int:
    cases = {key: run for key, (run, _) in CHILD_CASES.items()}
    imports = {key: common.FAMILY_IMPORTS[family] for key, (_, family) in CHILD_CASES.items()}
    return common.child_main(spec_json, cases, imports)


def _levels(text: str) -> list[int]:
    levels = [int(piece) for piece in text.split(",") if piece.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,16")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="instances (default 5000)")
    parser.add_argument(
        "--size",
        type=common.parse_size,
        default=16 * 1024,
        help="bytes per instance (default 16k; k, m, g are binary suffixes)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where a scratch directory is made and removed again (default /tmp)",
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated case letters a-e (default: all)"
    )
    parser.add_argument(
        "--concurrency",
        dest="levels",
        type=_levels,
        default=[16],
        help="requests in flight, threads of the threaded cases (default 16)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds the server waits before each response (default 0)",
    )
    common.add_run_options(parser)
    return parser


def print_small_table(
    title: str,
    plan: Sequence[tuple[int, str, str | None]],
    stats: dict[tuple[int, str, str | None], common.CaseStats],
    count: int,
    size: int,
) -> None:
    header = (
        "case",
        "c",
        "median inst/s",
        "min..max inst/s",
        "MB/s",
        "CPU ms/inst",
        "peak RSS MiB",
        "vs bare aiohttp",
    )
    lines: list[list[str]] = []
    for key in plan:
        row = stats[key]
        cells = [row.label, str(key[0])]
        if row.median is None:
            message = row.errors[0][:60] if row.errors else "not run"
            lines.append([*cells, "failed", message, *([""] * (len(header) - 4))])
            continue
        per_second = [speed * common.MB / size for speed in row.speeds]
        spread = f"{min(per_second):.0f}..{max(per_second):.0f}"
        if row.errors:
            spread += f" ({len(row.errors)} failed)"
        cpu = f"{1000 * statistics.median(row.cpu) / count:.2f}" if row.cpu else ""
        ceiling = stats.get((key[0], CEILING, None))
        lines.append(
            [
                *cells,
                f"{statistics.median(per_second):.0f}",
                spread,
                f"{row.median:.0f}",
                cpu,
                f"{max(row.rss):.0f}",
                common.ratio(row, ceiling),
            ]
        )
    common.print_rows(title, header, lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)

    from tests.loopback_server import write_instance_files

    keys = common.selected(CASES, args.cases)
    plan = [
        (level, key, engine)
        for level in args.levels
        for key in keys
        for engine in (args.engine if CHILD_CASES[key][1] == "dicomweb-async" else [None])
    ]
    stats = {item: common.CaseStats(common.with_engine(CASES[item[1]], item[2])) for item in plan}
    common.check_engines([engine for _, _, engine in plan])
    common.progress(common.environment(args.peers_python))
    server_args = ("--latency", str(args.latency), "--hashing", "none")
    with common.scratch_dir(args.out_dir) as scratch:
        files = scratch / "instances"
        common.progress(f"writing {args.count} x {args.size} bytes to {files}")
        write_instance_files(files, args.count, args.size, study_uid=STUDY_UID)
        with common.loopback_server(*server_args) as url:
            runs = len(plan) * args.repeat
            done = 0
            for _ in range(args.repeat):
                for item in plan:  # interleaved, so drift on a noisy machine hits every case
                    level, key, engine = item
                    spec: Spec = {
                        "case": key,
                        "url": url,
                        "files": str(files),
                        "concurrency": level,
                    }
                    if engine is not None:
                        spec["engine"] = engine
                    peer = CHILD_CASES[key][1] in common.PEER_FAMILIES
                    result = common.run_child(MODULE, spec, args.peers_python if peer else None)
                    done += 1
                    row = stats[item]
                    note = row.add(result, args.count, args.size)
                    common.progress(f"[{done}/{runs}] c={level} {row.label}: {note}")
    total = args.count * args.size / common.MB
    title = (
        f"Store of {args.count} x {args.size / 1024:g} KiB ({total:.0f} MB), one instance per "
        f"request, server latency {args.latency * 1000:g} ms, {args.repeat} runs"
    )
    print_small_table(title, plan, stats, args.count, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
