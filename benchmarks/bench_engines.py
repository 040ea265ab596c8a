"""Bare HTTP engines side by side: CPU per small POST and the rate of one large GET.

Each case runs in a child process of its own against the loopback DICOMweb server (also a
process of its own) and reports requests or bytes per second and the child's CPU time.
The cases are the engines under dicomweb-async (``EngineTransport`` with ``aiohttp`` and
with ``httpcore``) and, for comparison, stock httpx, httpx2 (a fork of httpx and httpcore)
and bare aiohttp. Cases whose package is not installed are reported as missing. Run it from
a virtualenv with only the runtime dependencies (plus httpx2 for that case)::

    python -m benchmarks.bench_engines                 # 5,000 x 16 KiB POSTs, 512 MiB GET
    python -m benchmarks.bench_engines --posts 2000 --get-size 256m --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = "1.2.826.0.1.3680043.8.498.424242"
CASES = ("dicomweb-async aiohttp", "dicomweb-async httpcore", "httpx", "httpx2", "aiohttp")
KIB = 1024
MIB = 1024 * KIB


def _size(text: str) -> int:
    units = {"k": KIB, "m": MIB, "g": 1024 * MIB}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _body(size: int) -> tuple[bytes, str]:
    # One valid instance (the server parses and validates it), framed by hand.
    from tests.loopback_server import make_instance_bytes

    boundary = "bench-boundary"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return head + make_instance_bytes(size, study_uid=STUDY + ".1") + tail, content_type


async def _posts(
    send: Callable[[bytes, dict[str, str]], Awaitable[int]], count: int, size: int, c: int
) -> None:
    body, content_type = _body(size)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            status = await send(body, headers)
            if status >= 500:
                raise RuntimeError(f"status {status}")

    await asyncio.gather(*(worker() for _ in range(c)))


async def _child(case: str, url: str, mode: str, count: int, size: int, c: int) -> int:
    """Run one case; returns bytes received (GET) or requests sent (POST)."""
    post_url, get_url = f"{url}/studies", f"{url}/studies/{STUDY}"
    if case == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=c)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
            if mode == "post":

                async def send(body: bytes, headers: dict[str, str]) -> int:
                    async with s.post(post_url, data=body, headers=headers) as r:
                        await r.read()
                        return r.status

                await _posts(send, count, size, c)
                return count
            total = 0
            async with s.get(get_url, headers={"Accept": "*/*"}) as r:
                async for chunk in r.content.iter_any():
                    total += len(chunk)
            return total
    if case == "httpx2":
        import httpx2 as lib
    else:
        import httpx as lib
    transport = None
    if case.startswith("dicomweb-async"):
        import httpx

        from dicomweb_async._transport.engines import EngineTransport

        limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
        transport = EngineTransport(case.split()[-1], limits=limits)
    limits = lib.Limits(max_connections=c, max_keepalive_connections=c)
    kwargs = {"transport": transport} if transport is not None else {"limits": limits}
    async with lib.AsyncClient(timeout=60, **kwargs) as client:  # type: ignore[arg-type]
        if mode == "post":

            async def send(body: bytes, headers: dict[str, str]) -> int:
                response = await client.post(post_url, content=body, headers=headers)
                return int(response.status_code)

            await _posts(send, count, size, c)
            return count
        total = 0
        async with client.stream("GET", get_url, headers={"Accept": "*/*"}) as response:
            async for chunk in response.aiter_raw():
                total += len(chunk)
        return total


def child_main(spec: str) -> int:
    args = json.loads(spec)
    # Imported before the clock starts: only the requests are timed.
    modules = {
        "aiohttp": ["aiohttp"],
        "httpx2": ["httpx2"],
        "httpx": ["httpx"],
        "dicomweb-async aiohttp": [
            "dicomweb_async._transport.engines",
            "dicomweb_async._transport.aiohttp_engine",
        ],
        "dicomweb-async httpcore": ["dicomweb_async._transport.engines"],
    }[args["case"]]
    try:
        for module in modules:
            __import__(module)
        _body(args["size"])  # and the test server's instance builder
    except ImportError as exc:
        print(json.dumps({"missing": str(exc)}))
        return 0
    started, cpu = time.perf_counter(), _cpu()
    done = asyncio.run(
        _child(args["case"], args["url"], args["mode"], args["count"], args["size"], args["c"])
    )
    elapsed, used = time.perf_counter() - started, _cpu() - cpu
    print(json.dumps({"done": done, "seconds": elapsed, "cpu": used}))
    return 0


def _run(case: str, url: str, mode: str, count: int, size: int, c: int) -> dict[str, float]:
    spec = json.dumps(
        {"case": case, "url": url, "mode": mode, "count": count, "size": size, "c": c}
    )
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_engines", "--child", spec],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--posts", type=int, default=5000, help="POSTs per run")
    parser.add_argument("--post-size", default="16k", help="bytes per POST")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--get-size", default="512m", help="bytes of the study GET")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        return child_main(args.child)
    post_size, get_size = _size(args.post_size), _size(args.get_size)
    instances = max(1, get_size // (2 * MIB))
    server = subprocess.Popen(
        [
            sys.executable, "-m", "tests.loopback_server", "--port", "0", "--hashing", "none",
            "--synthetic", f"{STUDY}:{instances}:2m",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        url = line[1]
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            for case in CASES:
                for mode, count in (("post", args.posts), ("get", 1)):
                    result = _run(case, url, mode, count, post_size, args.concurrency)
                    results.setdefault((case, mode), []).append(result)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(
        f"{args.posts} POSTs of {args.post_size} at concurrency {args.concurrency}, and one "
        f"GET of {instances} x 2 MiB; medians of {args.repeat} (python {sys.version.split()[0]})"
    )
    print(f"{'engine':26} {'req/s':>8} {'CPU ms/req':>11} {'GET MB/s':>9} {'GET CPU s':>10}")
    for case in CASES:
        posts, gets = results[(case, "post")], results[(case, "get")]
        if "missing" in posts[0]:
            print(f"{case:26} not installed ({posts[0]['missing']})")
            continue
        rate = statistics.median(r["done"] / r["seconds"] for r in posts)
        cpu = statistics.median(r["cpu"] / r["done"] * 1000 for r in posts)
        mbps = statistics.median(r["done"] / r["seconds"] / 1e6 for r in gets)
        get_cpu = statistics.median(r["cpu"] for r in gets)
        print(f"{case:26} {rate:8.0f} {cpu:11.3f} {mbps:9.0f} {get_cpu:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
