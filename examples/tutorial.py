"""The DICOMweb tutorial walkthrough: store, search, retrieve and delete the sample study.

Run ``scripts/tutorial.sh`` (or ``python3 examples/tutorial.py``). Without ``--url`` it
starts a local Orthanc with its DICOMweb plugin on a free loopback port, walks every step
against it and stops it again. With ``--url`` it walks the same steps against that server
(``--token`` for a bearer token, ``--user``/``--password`` for Basic auth).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio

from dicomweb_async import AsyncDICOMwebClient, AuthLike, MethodNotAllowedError
from dicomweb_async.testing import OrthancServer

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def _value(item: dict[str, object], tag: str) -> object:
    element = item.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None


class Walkthrough:
    """Prints each step with its outcome and timing, and counts failures."""

    def __init__(self) -> None:
        self.failures = 0
        self.started = time.perf_counter()

    def step(self, name: str, ok: bool, detail: str) -> None:
        mark = "ok  " if ok else "FAIL"
        elapsed = time.perf_counter() - self.started
        print(f"[{mark}] {elapsed:6.2f}s  {name}: {detail}", flush=True)
        if not ok:
            self.failures += 1


async def walk(url: str, auth: AuthLike) -> int:
    rows = list(csv.DictReader((DATA / "dicom-metadata.csv").open(encoding="utf-8")))
    files = {Path(r["fname"].replace("\\", "/")).name: r for r in rows}
    paths = sorted(DATA / name for name in files)
    study = rows[0]["StudyInstanceUID"]
    red = files["red-triangle.dcm"]
    series, sop = red["SeriesInstanceUID"], red["SOPInstanceUID"]
    w = Walkthrough()

    async with AsyncDICOMwebClient(url, auth=auth) as client:
        # Store: one instance per request, then all in one request, then into the study.
        for path in paths:
            result = await client.store_instances([path])
            w.step(f"store {path.name}", result.ok, f"status {result.status_code}")
        result = await client.store_instances(paths)
        w.step("store 3 files in one request", result.ok, f"{len(result.stored)} stored")
        result = await client.store_instances([DATA / "red-triangle.dcm"], study)
        w.step("store into /studies/{study}", result.ok, f"status {result.status_code}")

        # Retrieve.
        datasets = await client.retrieve_study(study)
        w.step("retrieve study", len(datasets) == 3, f"{len(datasets)} instances")
        datasets = await client.retrieve_series(study, series)
        w.step("retrieve series", len(datasets) == 2, f"{len(datasets)} instances")
        ds = await client.retrieve_instance(study, series, sop)
        w.step("retrieve instance", ds.SOPInstanceUID == sop, str(ds.get("ImageComments", "")))
        frames = await client.retrieve_instance_frames(study, series, sop, [1])
        frame = frames[0]
        w.step("retrieve frame 1", len(frame) > 0, f"{len(frame)} bytes, {frame.transfer_syntax}")
        for level, coro in (
            ("study", client.retrieve_study_metadata(study)),
            ("series", client.retrieve_series_metadata(study, series)),
        ):
            meta = await coro
            w.step(f"metadata of {level}", bool(meta), f"{len(meta)} instances")
        meta1 = await client.retrieve_instance_metadata(study, series, sop)
        w.step("metadata of instance", _value(meta1, "00080018") == sop, f"{len(meta1)} tags")
        jpeg = await client.retrieve_instance_rendered(study, series, sop, params={"quality": 90})
        w.step("rendered instance", jpeg[:2] == b"\xff\xd8", f"{len(jpeg)} bytes of JPEG")
        with tempfile.TemporaryDirectory() as tmp:
            saved = await client.download_study(study, tmp)
            same = all(
                item.path.read_bytes() == (DATA / name).read_bytes()
                for item in saved
                for name, row in files.items()
                if row["SOPInstanceUID"] == item.sop_instance_uid
            )
            w.step("download study to disk", len(saved) == 3 and same, "byte-identical")

        # Search: the six QIDO-RS routes.
        searches = {
            "studies": client.search_for_studies(search_filters={"StudyInstanceUID": study}),
            "series": client.search_for_series(search_filters={"SeriesInstanceUID": series}),
            "studies/{s}/series": client.search_for_series(
                study, search_filters={"SeriesInstanceUID": series}
            ),
            "instances": client.search_for_instances(search_filters={"SOPInstanceUID": sop}),
            "studies/{s}/instances": client.search_for_instances(
                study, search_filters={"SOPInstanceUID": sop}
            ),
            "studies/{s}/series/{se}/instances": client.search_for_instances(
                study, series, search_filters={"SOPInstanceUID": sop}
            ),
        }
        for route, search in searches.items():
            found = await search
            w.step(f"search {route}", len(found) == 1, f"{len(found)} match")
        found = await client.search_for_studies(search_filters={"PatientName": "Anony*"})
        w.step("search PatientName=Anony*", len(found) == 1, f"{len(found)} match")

        # Delete: not every server offers DICOMweb DELETE (Orthanc answers 405).
        for name, coro in (
            ("instance", client.delete_instance(study, series, sop)),
            ("series", client.delete_series(study, series)),
            ("study", client.delete_study(study)),
        ):
            try:
                await coro
                w.step(f"delete {name}", True, "deleted")
            except MethodNotAllowedError as exc:
                w.step(f"delete {name}", True, f"not offered by this server ({exc.status_code})")

    status = "all steps passed" if not w.failures else f"{w.failures} step(s) failed"
    print(f"{status} in {time.perf_counter() - w.started:.2f}s")
    return 1 if w.failures else 0


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with OrthancServer() as orthanc:
        print(f"started Orthanc (pid {orthanc.pid}) at {orthanc.dicomweb_url}")
        yield orthanc.dicomweb_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="DICOMweb root; default: start a local Orthanc")
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
    with server(args.url) as url:
        return anyio.run(walk, url, auth)


if __name__ == "__main__":
    sys.exit(main())
