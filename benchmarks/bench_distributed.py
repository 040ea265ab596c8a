"""A folder of small instances stored by one process and by a local Dask (or Ray) cluster.

Run from the repository root (Dask must be installed, and Ray for ``--engines ray``;
``pip install ".[dask,ray]"``)::

    python -m benchmarks.bench_distributed                      # latency-bound case
    python -m benchmarks.bench_distributed --count 20000 --latency 0.005 --workers 1,2
    python -m benchmarks.bench_distributed --engines dask,ray

The instances are spread over ``--studies`` studies (a study is never split over two
shards). Case (a) is ``store_folder`` in one process at each ``--concurrency``; case (b)
is ``dicomweb_async.distributed.store_folders`` over a fresh local cluster of N worker
processes (one thread each) at the same total concurrency, cut into ``--shards`` shards;
case (c) is ``store_folders_on_ray`` over a fresh ``local_ray(N)`` in the same way.
Starting the cluster (and importing the package on its workers) is timed on its own and
left out of (b)'s rate. Every run is a fresh process or cluster against a fresh loopback
server (a process of its own on 127.0.0.1, ``--hashing none``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as common

SINGLE = """
import asyncio, json, sys, time
from dicomweb_async import AsyncDICOMwebClient
async def main():
    async with AsyncDICOMwebClient(sys.argv[1], max_connections=int(sys.argv[3])) as client:
        t, cpu = time.perf_counter(), time.process_time()
        report = await client.store_folder(sys.argv[2], concurrency=int(sys.argv[3]))
        done = len(report.stored) + len(report.already_stored)
        return time.perf_counter() - t, done, time.process_time() - cpu
elapsed, stored, cpu = asyncio.run(main())
print(json.dumps({"elapsed": elapsed, "stored": stored, "cpu": cpu}))
"""


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1600, help="instances (default 1600)")
    parser.add_argument("--size", type=common.parse_size, default=16 * 1024, help="default 16k")
    parser.add_argument("--studies", type=int, default=32, help="studies (default 32)")
    parser.add_argument("--latency", type=float, default=0.02, help="server latency, s (0.02)")
    parser.add_argument("--concurrency", type=_levels, default=[16], help="totals (16)")
    parser.add_argument("--workers", type=_levels, default=[2], help="cluster sizes (2)")
    parser.add_argument(
        "--shards", type=_levels, default=[64], help="shard counts of case (b) (64, the default)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per Dask worker (local_cluster's)"
    )
    parser.add_argument(
        "--engines", default="dask", help="comma-separated: dask, ray (default dask)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--out-dir", type=Path, default=None, help="scratch parent (/tmp)")
    return parser


def _client_cpu() -> float:
    """CPU seconds of this process and every process under it but the loopback server.

    The driver, the scheduler, Dask's nannies and workers, Ray's daemons and workers: all
    that the client side of a sharded run spends, counted alike for Dask and Ray (whose
    worker processes are not waited for, so ``RUSAGE_CHILDREN`` would miss them).
    """
    psutil: Any = importlib.import_module("psutil")  # installed with Dask
    me = psutil.Process()
    total = float(sum(me.cpu_times()[:2]))
    for child in me.children(recursive=True):
        try:
            if "tests.loopback_server" not in child.cmdline():
                total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue  # ended meanwhile
    return total


#: Case label -> client CPU milliseconds per stored instance, one entry per run.
CPU_MS: dict[str, list[float]] = {}


def _single(url: str, folder: Path, concurrency: int) -> tuple[float, int, float]:
    done = subprocess.run(
        [sys.executable, "-c", SINGLE, url, str(folder), str(concurrency)],
        capture_output=True,
        text=True,
        check=True,
        cwd=common.REPO_ROOT,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["elapsed"]), int(result["stored"]), float(result["cpu"])


def _cluster(
    url: str, folder: Path, workers: int, concurrency: int, shards: int
) -> tuple[float, int, float, float]:
    from dicomweb_async.distributed import Target, local_cluster, store_folders

    started = time.perf_counter()
    options = {} if THREADS[0] is None else {"threads_per_worker": THREADS[0]}
    with local_cluster(workers, **options) as client:
        # Importing the package on each worker is part of starting up, not of the upload.
        client.run(importlib.import_module, "dicomweb_async.distributed")
        startup = time.perf_counter() - started
        t, cpu = time.perf_counter(), _client_cpu()
        report = store_folders(
            folder, Target(url), client=client, concurrency=concurrency, shards=shards
        )
        elapsed, cpu = time.perf_counter() - t, _client_cpu() - cpu
    return elapsed, len(report.stored) + len(report.already_stored), startup, cpu


def _warm_up() -> None:
    importlib.import_module("dicomweb_async.distributed")
    time.sleep(0.5)  # held, so that every task gets a worker process of its own


def _ray(
    url: str, folder: Path, workers: int, concurrency: int, shards: int
) -> tuple[float, int, float, float]:
    import ray

    from dicomweb_async._distributed.on_ray import SHARDS_PER_CPU
    from dicomweb_async.distributed import Target, local_ray, store_folders_on_ray

    started = time.perf_counter()
    with local_ray(workers):
        # Start the worker processes the shards will run in (as many as run at once) and
        # import the package in them, as for Dask.
        warm = ray.remote(num_cpus=1 / SHARDS_PER_CPU)(_warm_up)
        ray.get([warm.remote() for _ in range(workers * SHARDS_PER_CPU)])
        startup = time.perf_counter() - started
        t, cpu = time.perf_counter(), _client_cpu()
        report = store_folders_on_ray(folder, Target(url), concurrency=concurrency, shards=shards)
        elapsed, cpu = time.perf_counter() - t, _client_cpu() - cpu
    return elapsed, len(report.stored) + len(report.already_stored), startup, cpu


#: Threads of each Dask worker (``--threads``; None: local_cluster's default).
THREADS: list[int | None] = [None]

RUNNERS = {"dask": ("(b) Dask", _cluster), "ray": ("(c) Ray", _ray)}


def _cluster_cases(
    engine: str,
    args: argparse.Namespace,
    folder: Path,
    level: int,
    server_args: tuple[str, ...],
    rows: dict[str, list[float]],
    startups: dict[str, list[float]],
) -> None:
    """One run of every cluster size and shard count on ``engine``, into the tables."""
    name, run = RUNNERS[engine]
    for workers, shards in [(w, n) for w in args.workers for n in args.shards]:
        with common.loopback_server(*server_args) as url:
            elapsed, stored, startup, cpu = run(url, folder, workers, level, shards)
        label = f"{name}, {workers} worker process(es), {shards} shards, c={level}"
        rows.setdefault(label, []).append(stored / elapsed)
        CPU_MS.setdefault(label, []).append(1000 * cpu / stored)
        startups.setdefault(f"{name[4:]}, {workers} worker process(es)", []).append(startup)
        common.progress(f"{label}: {stored / elapsed:.0f} inst/s ({stored} stored)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tests.loopback_server import write_instance_files

    THREADS[0] = args.threads
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(RUNNERS))
    if unknown:
        raise SystemExit(f"unknown engine(s): {', '.join(unknown)}")

    common.progress(common.environment(None))
    rows: dict[str, list[float]] = {}
    startups: dict[str, list[float]] = {}
    per_study = max(1, args.count // args.studies)
    with common.scratch_dir(args.out_dir) as scratch:
        folder = scratch / "instances"
        for number in range(args.studies):
            write_instance_files(
                folder / f"study{number}",
                per_study,
                args.size,
                study_uid=f"1.2.826.0.1.3680043.8.498.8800{number + 1}",
            )
        count = per_study * args.studies
        common.progress(f"wrote {count} x {args.size} bytes in {args.studies} studies")
        server_args = ("--latency", str(args.latency), "--hashing", "none")
        for _ in range(args.repeat):
            for level in args.concurrency:
                # A fresh server per run: what an earlier run stored would answer 409s.
                with common.loopback_server(*server_args) as url:
                    elapsed, stored, cpu = _single(url, folder, level)
                label = f"(a) one process, store_folder, c={level}"
                rows.setdefault(label, []).append(stored / elapsed)
                CPU_MS.setdefault(label, []).append(1000 * cpu / stored)
                common.progress(f"{label}: {stored / elapsed:.0f} inst/s ({stored} stored)")
                for engine in engines:
                    _cluster_cases(engine, args, folder, level, server_args, rows, startups)
    best_single = max(statistics.median(v) for k, v in rows.items() if k.startswith("(a)"))
    single_cpu = min(statistics.median(v) for k, v in CPU_MS.items() if k.startswith("(a)"))
    title = (
        f"Store of {count} x {args.size / 1024:g} KiB in {args.studies} studies, server "
        f"latency {args.latency * 1000:g} ms, {args.repeat} runs"
    )
    lines = [
        [
            label,
            f"{statistics.median(v):.0f}",
            f"{min(v):.0f}..{max(v):.0f}",
            f"{statistics.median(v) / best_single:.2f}x",
            f"{statistics.median(CPU_MS[label]):.3f}",
            f"{statistics.median(CPU_MS[label]) / single_cpu:.2f}x",
        ]
        for label, v in rows.items()
    ]
    common.print_rows(
        title,
        [
            "case",
            "median inst/s",
            "min..max",
            "vs best single process",
            "client CPU ms/inst",
            "CPU vs one process",
        ],
        lines,
    )
    start_lines = [
        [label, f"{statistics.median(v):.2f}", f"{min(v):.2f}..{max(v):.2f}"]
        for label, v in startups.items()
    ]
    common.print_rows(
        "Local cluster start-up (not in the rates above)",
        ["cluster", "median s", "min..max s"],
        start_lines,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
