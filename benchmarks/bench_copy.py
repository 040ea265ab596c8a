"""A study copied from one loopback server to another: streamed, against disk and back.

Run from the repository root::

    python -m benchmarks.bench_copy                    # 1 GiB: 64 x 16 MiB in 2 series
    python -m benchmarks.bench_copy --count 256 --size 4m --repeat 5

Cases, each a fresh process against two fresh loopback servers (processes of their own on
127.0.0.1, ``--hashing none``):

(a) ``copy_studies`` (instances above 4 MiB go through temporary files, the default);
(b) ``copy_studies`` with ``spool_bytes`` above the instance size (held in memory);
(c) what users do without it: ``download_study`` to a folder, then ``store_folder`` of
    those files (the time of both, and the peak of the process).

Wall time and the process's own peak resident memory (``VmHWM``) are reported; the
scratch folders are in ``--out-dir`` (default /tmp).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import _common as common

STUDY = "1.2.826.0.1.3680043.8.498.9900001"

CHILD = """
import anyio, json, sys, time
from pathlib import Path
from dicomweb_async import AsyncDICOMwebClient, copy_studies

source, destination, study, case, scratch, size = sys.argv[1:7]

async def main():
    async with AsyncDICOMwebClient(source) as src, AsyncDICOMwebClient(destination) as dst:
        started = time.perf_counter()
        if case == "copy":
            report = await copy_studies(src, dst, [study], spool_dir=scratch)
            moved, ok = report.bytes_copied, report.ok
        elif case == "copy-memory":
            report = await copy_studies(src, dst, [study], spool_bytes=int(size) + 1)
            moved, ok = report.bytes_copied, report.ok
        else:
            await src.download_study(study, scratch, concurrency=4)
            report = await dst.store_folder(scratch, concurrency=4)
            moved, ok = report.bytes_stored, report.ok
        return time.perf_counter() - started, moved, ok

elapsed, moved, ok = anyio.run(main)
peak = 0
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) * 1024
print(json.dumps({"elapsed": elapsed, "bytes": moved, "ok": ok, "peak": peak}))
"""

CASES = {
    "copy": "(a) copy_studies, spooled above 4 MiB",
    "copy-memory": "(b) copy_studies, held in memory",
    "disk": "(c) download_study, then store_folder",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=64, help="instances (default 64)")
    parser.add_argument("--size", type=common.parse_size, default=16 * 1024 * 1024)
    parser.add_argument("--series", type=int, default=2, help="series (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--out-dir", type=Path, default=None, help="scratch parent (/tmp)")
    return parser


def _run(case: str, source: str, destination: str, scratch: Path, size: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, source, destination, STUDY, case, str(scratch), str(size)],
        capture_output=True,
        text=True,
        check=True,
        cwd=common.REPO_ROOT,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.progress(common.environment(None))
    total = args.count * args.size
    synthetic = f"{STUDY}:{args.count}:{args.size}:{args.series}"
    seconds: dict[str, list[float]] = {}
    peaks: dict[str, list[float]] = {}
    with common.scratch_dir(args.out_dir) as scratch:
        for _ in range(args.repeat):
            for case in CASES:
                work = scratch / case
                work.mkdir()
                with (
                    common.loopback_server("--hashing", "none", "--synthetic", synthetic) as src,
                    common.loopback_server("--hashing", "none") as dst,
                ):
                    result = _run(case, src, dst, work, args.size)
                common.clear_dir(work)
                if not result["ok"] or result["bytes"] != total:
                    raise SystemExit(f"{case}: incomplete ({result})")
                seconds.setdefault(case, []).append(result["elapsed"])
                peak = result["peak"] / 2**20
                peaks.setdefault(case, []).append(peak)
                common.progress(f"{CASES[case]}: {result['elapsed']:.2f} s, peak {peak:.0f} MiB")
    baseline = statistics.median(seconds["disk"])
    lines = [
        [
            CASES[case],
            f"{statistics.median(seconds[case]):.2f}",
            f"{min(seconds[case]):.2f}..{max(seconds[case]):.2f}",
            f"{total / statistics.median(seconds[case]) / 1e6:.0f}",
            f"{statistics.median(peaks[case]):.0f}",
            f"{statistics.median(seconds[case]) / baseline:.2f}x",
        ]
        for case in CASES
    ]
    common.print_rows(
        f"Copy of {args.count} x {args.size / 2**20:g} MiB in {args.series} series "
        f"({total / 2**30:.2f} GiB) between two loopback servers, {args.repeat} runs",
        ["case", "median s", "min..max s", "MB/s", "peak RSS MiB", "time vs (c)"],
        lines,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
