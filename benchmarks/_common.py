"""Shared pieces of the benchmark scripts.

* :func:`loopback_server` runs ``tests.loopback_server`` as a separate process.
* Every measured run happens in a fresh Python process (:func:`run_child`), so its peak
  RSS belongs to that one case. The child runs :func:`child_main`, which times the case
  and prints one ``RESULT {json}`` line.
* :class:`CaseStats` and :func:`print_table` turn the runs into the result table.
* Cases of the peers (dicomweb-client, requests, aiohttp) can run in another interpreter
  (``--peers-python``), so the dicomweb-async cases run in an environment with nothing but
  the package's runtime dependencies: installing dicomweb-client brings numpy, which
  pydicom then imports, and other packages change what httpx and httpcore do.
* :func:`upload_aiohttp` and :func:`upload_httpx_bytes` are the hand-built-body ceilings
  the upload scripts share.

Throughput is instance bytes (N x SIZE, multipart framing not counted) divided by the wall
time of the case inside its process (after imports, including client set-up). MB is
10**6 bytes; RSS is reported in MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
MIB = 1024 * 1024
RESULT_PREFIX = "RESULT "
CHILD_TIMEOUT = 900.0
DICOM_JSON = "application/dicom+json"
BOUNDARY = "benchmark-boundary-4b1d7e0c9a2f"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

Spec = dict[str, Any]

# Modules each family of cases imports before its CPU clock starts (``child_main``).
FAMILY_IMPORTS: dict[str, tuple[str, ...]] = {
    "dicomweb-async": ("anyio", "httpx", "pydicom", "dicomweb_async"),
    "httpx": ("anyio", "httpx"),
    "dicomweb-client": ("pydicom", "requests", "dicomweb_client"),
    "tutorial": ("requests", "urllib3.filepost"),
    "aiohttp": ("aiohttp",),
}
# Families that run in ``--peers-python``: everything but dicomweb-async and bare httpx.
PEER_FAMILIES = frozenset({"dicomweb-client", "tutorial", "aiohttp"})


# --------------------------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> int:
    """``2m`` -> 2 MiB; suffixes k, m, g are binary; a bare number is bytes."""
    units = {"k": 1024, "m": MIB, "g": 1024 * MIB}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    if cleaned and cleaned[-1] in units:
        return int(float(cleaned[:-1]) * units[cleaned[-1]])
    return int(cleaned)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=512, help="instances (default 512)")
    parser.add_argument(
        "--size", type=parse_size, default=2 * MIB, help="bytes per instance (default 2m)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where a scratch directory is made and removed again "
        "(default /tmp; /dev/shm keeps the disk out of the measurement)",
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated case letters to run (default: all)"
    )
    add_run_options(parser)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--peers-python`` and the hidden ``--child``."""
    parser.add_argument(
        "--engine",
        type=engine_list,
        default=[None],
        help="comma-separated values passed as AsyncDICOMwebClient(engine=...), one row per "
        "value for every dicomweb-async case (default: the parameter is not passed)",
    )
    parser.add_argument(
        "--peers-python",
        default=None,
        help="interpreter for the dicomweb-client, requests and aiohttp cases (default: "
        "this one); the dicomweb-async, bare httpx and curl cases use this one",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def engine_list(text: str) -> list[str | None]:
    """``--engine auto,httpcore`` -> ["auto", "httpcore"]."""
    values: list[str | None] = [piece.strip() for piece in text.split(",") if piece.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected one or more engine names")
    return values


def check_engines(engines: Sequence[str | None]) -> None:
    """Stop before any run when an engine is to be passed to a client without the parameter."""
    if all(engine is None for engine in engines):
        return
    import inspect

    from dicomweb_async import AsyncDICOMwebClient

    if "engine" not in inspect.signature(AsyncDICOMwebClient).parameters:
        raise SystemExit("--engine: this AsyncDICOMwebClient has no engine= parameter")


def client_options(spec: Spec) -> dict[str, Any]:
    """Keyword arguments for ``AsyncDICOMwebClient``: ``engine`` only when one was given."""
    engine = spec.get("engine")
    return {} if engine is None else {"engine": engine}


def with_engine(label: str, engine: str | None) -> str:
    """A case label, with the engine when one was given."""
    return label if engine is None else f"{label} [engine={engine}]"


def selected(cases: Mapping[str, Any], wanted: str | None) -> list[str]:
    """Case keys to run, in table order."""
    if not wanted:
        return list(cases)
    keys = [key.strip() for key in wanted.split(",") if key.strip()]
    unknown = [key for key in keys if key not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(unknown)}; choose from {', '.join(cases)}")
    return [key for key in cases if key in keys]


# --------------------------------------------------------------------------------------------
# Processes and directories


@contextlib.contextmanager
def loopback_server(*args: str) -> Iterator[str]:
    """Run ``python -m tests.loopback_server`` on a free port; yield its base URL."""
    command = [sys.executable, "-m", "tests.loopback_server", "--port", "0", *args]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"loopback server did not start (said {line!r})")
        yield line.split(maxsplit=1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to this one process
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def scratch_dir(parent: Path | None) -> Iterator[Path]:
    """A fresh directory under ``parent`` (default /tmp), removed on exit."""
    base = parent if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="dicomweb-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clear_dir(path: Path) -> None:
    """Remove ``path`` and flush the page cache's dirty pages before the next run."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def run_child(module: str, spec: Spec, python: str | None = None) -> dict[str, Any]:
    """Run one case in a new interpreter (``python``, default this one).

    Returns the child's ``RESULT`` record, or ``{"error": ...}``.
    """
    command = [python or sys.executable, "-m", module, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


# --------------------------------------------------------------------------------------------
# Child side


@dataclass
class Outcome:
    """What one case reports about its run.

    ``instances`` and ``bytes`` are what the case saw arrive or leave (None when it has no
    way to tell); the parent checks them against the expected study.
    """

    seconds: float
    instances: int | None = None
    bytes: int | None = None
    rss_of_children: bool = False  # the work ran in a program the case started
    rss_mib: float | None = None  # that program's own peak, when known


def timed(func: Callable[[], tuple[int | None, int | None]]) -> Outcome:
    """Run ``func`` (returning instances, bytes) and time it with a monotonic clock."""
    start = time.perf_counter()
    instances, size = func()
    return Outcome(time.perf_counter() - start, instances, size)


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children).

    On Linux a process's ``ru_maxrss`` starts from the peak of the process it was started
    from (the kernel carries the old image's high-water mark across ``exec``), so a child
    of a parent that peaked at 49 MiB reports at least 49 MiB. ``VmHWM`` in
    ``/proc/self/status`` belongs to the current image only; ``ru_maxrss`` is the fallback.
    """
    if not children:
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB  # kB
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss  # KiB on Linux
    return kib * 1024 / MIB


GNU_TIME = "/usr/bin/time"


def run_program(
    command: Sequence[str], capture: bool = False
) -> tuple[subprocess.CompletedProcess[str], float | None]:
    """Run a program (``check=True``); also its own peak RSS in MiB, or None.

    A program started from Python would report Python's peak too (see
    :func:`peak_rss_mib`), so it runs under GNU time, which forks it from a small process
    and reports its ``%M``. Without ``/usr/bin/time`` the peak is None and the caller falls
    back to ``RUSAGE_CHILDREN``.
    """
    if not os.access(GNU_TIME, os.X_OK):
        return subprocess.run(command, check=True, capture_output=capture, text=True), None
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        wrapped = [GNU_TIME, "-f", "%M", "-o", report.name, *command]
        done = subprocess.run(wrapped, check=True, capture_output=capture, text=True)
        kib = int(report.read().split()[-1])
    return done, kib / 1024


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU time of this process, all threads (or of its waited-for children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(
    spec_json: str,
    cases: Mapping[str, Callable[[Spec], Outcome]],
    imports: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Entry point of a child process: run the case named in the spec, print its result.

    ``imports`` names, per case, the modules to import before the CPU clock starts; the
    record's ``cpu_s`` is the process's rusage (user + system) from then to the end.
    """
    spec: Spec = json.loads(spec_json)
    names = list((imports or {}).get(spec["case"], ()))
    # dicomweb-async loads its engine at the first request; bare aiohttp imports aiohttp
    # before its clock, so the client's engine (aiohttp on asyncio) is imported first too.
    if "dicomweb_async" in names and spec.get("engine", "auto") in ("auto", "aiohttp"):
        names.append("aiohttp")
    for name in names:
        importlib.import_module(name)
    start = {False: cpu_seconds(), True: cpu_seconds(children=True)}
    outcome = cases[spec["case"]](spec)
    # Cases whose work runs in a program they start (curl) report that program's usage.
    by_children = outcome.rss_of_children
    cpu = cpu_seconds(by_children) - start[by_children]
    record = {
        "seconds": outcome.seconds,
        "instances": outcome.instances,
        "bytes": outcome.bytes,
        "rss_mib": (
            outcome.rss_mib
            if outcome.rss_mib is not None
            else peak_rss_mib(outcome.rss_of_children)
        ),
        "cpu_s": cpu,
    }
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Hand-built uploads: one instance per request, the body built in memory


def multipart_head() -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")


def multipart_tail() -> bytes:
    return f"\r\n--{BOUNDARY}--\r\n".encode("ascii")


def upload_files(spec: Spec) -> list[Path]:
    """The ``*.dcm`` files of ``spec["files"]``, sorted, at most ``spec["limit"]``."""
    paths = sorted(Path(spec["files"]).glob("*.dcm"))
    limit = spec.get("limit")
    return paths[:limit] if limit else paths


def _hand_built(path: Path, head: bytes, tail: bytes) -> bytes:
    with open(path, "rb") as reader:
        return b"".join((head, reader.read(), tail))


def upload_aiohttp(spec: Spec) -> Outcome:
    """Bare aiohttp: ``spec["concurrency"]`` tasks, each POSTing one instance per request.

    Each body is the file read whole (a blocking read in the event loop) between the
    multipart head and tail; aiohttp sends it with its Content-Length. The STOW-RS answer
    is read and not parsed. One ``ClientSession`` whose connector holds ``concurrency``
    connections.
    """
    import aiohttp

    paths = upload_files(spec)
    url = f"{spec['url']}/studies"
    head, tail = multipart_head(), multipart_tail()
    headers = {"Accept": DICOM_JSON, "Content-Type": RELATED}
    concurrency = int(spec["concurrency"])

    async def main() -> tuple[int, None]:
        stored = 0
        pending = iter(paths)
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=None)

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal stored
            for path in pending:
                body = _hand_built(path, head, tail)
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        stored += 1

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return stored, None

    return timed(lambda: asyncio.run(main()))


def upload_httpx_bytes(spec: Spec) -> Outcome:
    """Bare httpx, as :func:`upload_aiohttp`: hand-built ``bytes`` bodies, asyncio tasks."""
    import httpx

    paths = upload_files(spec)
    url = f"{spec['url']}/studies"
    head, tail = multipart_head(), multipart_tail()
    headers = {"Accept": DICOM_JSON, "Content-Type": RELATED}
    concurrency = int(spec["concurrency"])

    async def main() -> tuple[int, None]:
        stored = 0
        pending = iter(paths)
        limits = httpx.Limits(max_connections=concurrency)

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal stored
            for path in pending:
                body = _hand_built(path, head, tail)
                response = await client.post(url, content=body, headers=headers)
                if response.status_code == 200:
                    stored += 1

        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return stored, None

    return timed(lambda: asyncio.run(main()))


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class CaseStats:
    """Every run of one case."""

    label: str
    speeds: list[float] = field(default_factory=list)  # MB/s
    rss: list[float] = field(default_factory=list)  # MiB
    cpu: list[float] = field(default_factory=list)  # CPU seconds of the run's process
    errors: list[str] = field(default_factory=list)

    def add(self, result: Mapping[str, Any], count: int, size: int) -> str:
        """Record a child's result after checking it saw the whole study; a progress note."""
        error = result.get("error")
        if error is None:
            instances, seen = result.get("instances"), result.get("bytes")
            if instances is not None and instances != count:
                error = f"saw {instances} instances, expected {count}"
            elif seen is not None and seen < count * size:
                error = f"saw {seen} bytes, expected at least {count * size}"
        if error is not None:
            self.errors.append(str(error))
            return f"FAILED: {error}"
        speed = count * size / MB / float(result["seconds"])
        self.speeds.append(speed)
        self.rss.append(float(result["rss_mib"]))
        cpu = result.get("cpu_s")
        if isinstance(cpu, int | float):
            self.cpu.append(float(cpu))
        return f"{speed:8.0f} MB/s  {result['rss_mib']:7.0f} MiB"

    @property
    def median(self) -> float | None:
        return statistics.median(self.speeds) if self.speeds else None


def ratio(row: CaseStats, baseline: CaseStats | None) -> str:
    """Median of ``row`` over the median of ``baseline``, as ``0.93x``."""
    if baseline is None or row.median is None or not baseline.median:
        return "n/a"
    return f"{row.median / baseline.median:.2f}x"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_rows(title: str, header: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "| " + " | ".join([first, *rest]) + " |"

    print(f"\n{title}\n")
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt(line))
    print(flush=True)


def print_table(
    title: str, rows: Sequence[CaseStats], baselines: Mapping[str, CaseStats | None]
) -> None:
    """case | median MB/s | min..max | peak RSS MiB | one ratio column per baseline.

    ``baselines`` maps a column name ("bare httpx") to the case whose median is 1.00x; a
    baseline that was not run is left out.
    """
    columns = {name: base for name, base in baselines.items() if base is not None}
    header = (
        "case",
        "median MB/s",
        "min..max MB/s",
        "peak RSS MiB",
        *(f"vs {name}" for name in columns),
    )
    lines: list[tuple[str, ...]] = []
    for row in rows:
        if row.median is None:
            message = row.errors[0][:40] if row.errors else ""
            lines.append((row.label, "failed", message, "", *("" for _ in columns)))
            continue
        spread = f"{min(row.speeds):.0f}..{max(row.speeds):.0f}"
        if row.errors:
            spread += f" ({len(row.errors)} failed)"
        ratios = (ratio(row, base) for base in columns.values())
        lines.append((row.label, f"{row.median:.0f}", spread, f"{max(row.rss):.0f}", *ratios))
    print_rows(title, header, lines)


# What `environment` runs in each interpreter: versions, and the packages whose mere
# presence changes what is measured.
_DESCRIBE = """
import importlib.metadata as md, importlib.util as iu, json, platform, sys
names = %r
found = {}
for name in names:
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
spec = iu.find_spec("dicomweb_async")
print(json.dumps({
    "python": platform.python_version(),
    "prefix": sys.prefix,
    "versions": found,
    "present": [n for n in ("sniffio", "numpy", "aiohttp") if iu.find_spec(n) is not None],
    "dicomweb_async": spec.origin if spec is not None else None,
}))
"""
_PACKAGES = (
    "dicomweb-async",
    "httpx",
    "httpcore",
    "anyio",
    "pydicom",
    "multipart",
    "dicomweb-client",
    "requests",
    "requests-toolbelt",
    "aiohttp",
)


def describe_python(python: str | None = None, *, package: bool = True) -> str:
    """One line about an interpreter: where it lives, what it has installed.

    With ``package``, also where ``dicomweb_async`` is imported from (from the repository
    root, as the cases run, the checkout comes before site-packages).
    """
    command = [python or sys.executable, "-c", _DESCRIBE % (_PACKAGES,)]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
        )
        info = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return f"{python}: cannot describe ({exc})"
    parts = [f"Python {info['python']} in {info['prefix']}"]
    parts += [f"{name} {version}" for name, version in info["versions"].items()]
    present = info["present"]
    parts.append("with " + ", ".join(present) if present else "no sniffio, numpy or aiohttp")
    if package and info["dicomweb_async"]:
        parts.append(f"dicomweb_async imported from {Path(info['dicomweb_async']).parent}")
    return ", ".join(parts)


def environment(peers_python: str | None = None) -> str:
    """Lines describing the machine and the versions measured, per interpreter."""
    lines = [f"{os.cpu_count()} CPUs"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        first = subprocess.run(
            ["curl", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()
        lines[0] += f", curl {first[1]}"
    lines.append(f"dicomweb-async, bare httpx, server: {describe_python()}")
    if peers_python is not None:
        lines.append(f"peers: {describe_python(peers_python, package=False)}")
    return "\n".join(lines)
