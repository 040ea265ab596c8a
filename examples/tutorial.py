"""The DICOMweb tutorial walkthrough: store, retrieve, search, delete, change feed.

Run ``scripts/tutorial.sh`` (or ``python3 examples/tutorial.py``). By default it starts the
offline Azure DICOM service emulator (``dicomweb_async.testing.AzureDicomEmulator``) on a
free loopback port and walks every step of the Azure tutorial against it, in its order.
``--server orthanc`` starts a local Orthanc with its DICOMweb plugin instead, and ``--url``
walks the same steps against any server (``--token`` for a bearer token,
``--user``/``--password`` for Basic auth). Steps a server does not offer (DELETE and the
change feed on Orthanc) are reported as such, not as failures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio

from dicomweb_async import (
    AuthLike,
    AzureDICOMwebClient,
    FailureReason,
    HTTPStatusError,
    MethodNotAllowedError,
    NotAcceptableError,
    NotFoundError,
    StoreResult,
)
from dicomweb_async.testing import AzureDicomEmulator, OrthancServer

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def _value(item: dict[str, Any], tag: str) -> object:
    element = item.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None


def _stored(result: StoreResult) -> tuple[bool, str]:
    """A store step succeeds when every instance is stored or was already there."""
    duplicates = [f for f in result.failed if f.reason == FailureReason.ALREADY_STORED]
    ok = len(duplicates) == len(result.failed)
    detail = f"status {result.status_code}, {len(result.stored)} stored"
    if duplicates:
        detail += f", {len(duplicates)} already stored (45070)"
    return ok, detail


class Walkthrough:
    """Prints each step with its outcome and timing, and counts failures."""

    def __init__(self) -> None:
        self.failures = 0
        self.steps = 0
        self.started = time.perf_counter()

    def step(self, name: str, ok: bool, detail: str) -> None:
        self.steps += 1
        mark = "ok  " if ok else "FAIL"
        elapsed = time.perf_counter() - self.started
        print(f"[{mark}] {elapsed:6.2f}s  {name}: {detail}", flush=True)
        if not ok:
            self.failures += 1

    async def optional(self, name: str, action: Callable[[], Awaitable[str]]) -> None:
        """A step some servers do not offer: 404, 405 or 406 is reported, not failed."""
        try:
            detail = await action()
        except (NotFoundError, MethodNotAllowedError, NotAcceptableError) as exc:
            self.step(name, True, f"not offered by this server ({exc.status_code})")
            return
        self.step(name, True, detail)


async def walk(url: str, auth: AuthLike, *, single_part: bool) -> int:
    rows = list(csv.DictReader((DATA / "dicom-metadata.csv").open(encoding="utf-8")))
    files = {Path(r["fname"].replace("\\", "/")).name: r for r in rows}
    paths = sorted(DATA / name for name in files)
    study = rows[0]["StudyInstanceUID"]
    red = files["red-triangle.dcm"]
    series, sop = red["SeriesInstanceUID"], red["SOPInstanceUID"]
    w = Walkthrough()
    started = datetime.now(timezone.utc) - timedelta(seconds=1)

    # The Azure client: the standard DICOMweb methods and the service's own APIs (the
    # change feed here). Against other servers those steps are reported as not offered.
    async with AzureDICOMwebClient(url, auth=auth) as client:
        # Store: one instance per request (Azure's single-part form where it is offered),
        # all three in one request, and into /studies/{study}. The Azure service answers
        # a repeated instance with 409/45070, Orthanc with 200: both count as stored.
        for path in paths:
            result = await client.store_instances([path], single_part=single_part)
            w.step(f"store {path.name}", *_stored(result))
        if single_part:
            again = await client.store_instances([paths[0]], single_part=True)
            dup = [f.reason for f in again.failed] == [FailureReason.ALREADY_STORED]
            w.step("store it again", dup and again.status_code == 409, "409, 45070 expected")
        w.step("store 3 files in one request", *_stored(await client.store_instances(paths)))
        result = await client.store_instances([DATA / "red-triangle.dcm"], study)
        w.step("store into /studies/{study}", *_stored(result))

        # Retrieve.
        datasets = await client.retrieve_study(study)
        w.step("retrieve study", len(datasets) == 3, f"{len(datasets)} instances")
        datasets = await client.retrieve_series(study, series)
        w.step("retrieve series", len(datasets) == 2, f"{len(datasets)} instances")
        ds = await client.retrieve_instance(study, series, sop)
        w.step("retrieve instance", ds.SOPInstanceUID == sop, str(ds.get("ImageComments", "")))
        frame = (await client.retrieve_instance_frames(study, series, sop, [1]))[0]
        w.step("retrieve frame 1", len(frame) > 0, f"{len(frame)} bytes, {frame.transfer_syntax}")
        meta = await client.retrieve_study_metadata(study)
        w.step("metadata of study", len(meta) == 3, f"{len(meta)} instances")
        meta = await client.retrieve_series_metadata(study, series)
        w.step("metadata of series", len(meta) == 2, f"{len(meta)} instances")
        meta1 = await client.retrieve_instance_metadata(study, series, sop)
        w.step("metadata of instance", _value(meta1, "00080018") == sop, f"{len(meta1)} tags")

        async def rendered() -> str:
            jpeg = await client.retrieve_instance_rendered(
                study, series, sop, params={"quality": 90}
            )
            if jpeg[:2] != b"\xff\xd8":
                raise ValueError("not a JPEG")
            return f"{len(jpeg)} bytes of JPEG"

        await w.optional("rendered instance", rendered)
        with tempfile.TemporaryDirectory() as tmp:
            saved = await client.download_study(study, tmp)
            by_sop = {row["SOPInstanceUID"]: DATA / name for name, row in files.items()}
            same = all(
                item.path.read_bytes() == by_sop[item.sop_instance_uid].read_bytes()
                for item in saved
            )
            w.step("download study to disk", len(saved) == 3 and same, "byte-identical")

        # Search: the six QIDO-RS routes.
        searches: dict[str, Callable[[], Awaitable[list[dict[str, Any]]]]] = {
            "studies": lambda: client.search_for_studies(
                search_filters={"StudyInstanceUID": study}
            ),
            "series": lambda: client.search_for_series(
                search_filters={"SeriesInstanceUID": series}
            ),
            "studies/{s}/series": lambda: client.search_for_series(
                study, search_filters={"SeriesInstanceUID": series}
            ),
            "instances": lambda: client.search_for_instances(
                search_filters={"SOPInstanceUID": sop}
            ),
            "studies/{s}/instances": lambda: client.search_for_instances(
                study, search_filters={"SOPInstanceUID": sop}
            ),
            "studies/{s}/series/{se}/instances": lambda: client.search_for_instances(
                study, series, search_filters={"SOPInstanceUID": sop}
            ),
        }
        for route, search in searches.items():
            found = await search()
            w.step(f"search {route}", len(found) == 1, f"{len(found)} match")
        found = await client.search_for_studies(search_filters={"PatientName": "Anony*"})
        w.step("search PatientName=Anony*", len(found) == 1, f"{len(found)} match")

        # Delete: instance, series, study (DICOMweb DELETE is not offered everywhere).
        async def delete(kind: str) -> str:
            if kind == "instance":
                await client.delete_instance(study, series, sop)
            elif kind == "series":
                await client.delete_series(study, series)
            else:
                await client.delete_study(study)
            return "deleted"

        for kind in ("instance", "series", "study"):
            await w.optional(f"delete {kind}", lambda kind=kind: delete(kind))

        # The change feed shows what happened (Azure's own API).
        async def feed() -> str:
            entries = [
                entry
                async for entry in client.iter_changefeed(
                    start_time=started, include_metadata=False
                )
            ]
            actions: dict[str, int] = {}
            for entry in entries:
                actions[entry.action] = actions.get(entry.action, 0) + 1
            if "create" not in actions:
                raise ValueError("no create entries in the change feed")
            return ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))

        await w.optional("change feed", feed)

    status = "all steps passed" if not w.failures else f"{w.failures} step(s) failed"
    print(f"{status}: {w.steps} steps in {time.perf_counter() - w.started:.2f}s")
    return 1 if w.failures else 0


@contextlib.contextmanager
def server(url: str | None, kind: str) -> Iterator[tuple[str, bool]]:
    """The server to walk against, and whether it takes single-part uploads."""
    if url:
        yield url, False
        return
    if kind == "orthanc":
        with OrthancServer() as orthanc:
            print(f"started Orthanc (pid {orthanc.pid}) at {orthanc.dicomweb_url}")
            yield orthanc.dicomweb_url, False
        return
    with AzureDicomEmulator().serve() as emulated:
        print(f"started the Azure DICOM service emulator at {emulated}")
        yield str(emulated), True


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="DICOMweb root of a running server")
    parser.add_argument(
        "--server",
        choices=["emulator", "orthanc"],
        default="emulator",
        help="local server to start when --url is not given (default: emulator)",
    )
    parser.add_argument(
        "--single-part", action="store_true", help="upload with Azure's single-part form"
    )
    parser.add_argument("--token", help="bearer token (or set DICOMWEB_TOKEN)")
    parser.add_argument("--user", help="Basic auth user name")
    parser.add_argument("--password", help="Basic auth password (or set DICOMWEB_PASSWORD)")
    args = parser.parse_args()
    auth: AuthLike = None
    token = args.token or os.environ.get("DICOMWEB_TOKEN")
    if token:
        auth = token
    elif args.user:
        auth = (args.user, args.password or os.environ.get("DICOMWEB_PASSWORD", ""))
    try:
        with server(args.url, args.server) as (url, single_part):
            return anyio.run(lambda: walk(url, auth, single_part=single_part or args.single_part))
    except HTTPStatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
