"""Tests of the loopback DICOMweb server that the streaming and benchmark suites rely on."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import trio

from dicomweb_async._core.multipart_writer import dataset_bytes
from tests.loopback_server import (
    DUPLICATE_INSTANCE,
    PROCESSING_FAILURE,
    STUDY_MISMATCH,
    LoopbackServer,
    make_instance_bytes,
    write_instance_files,
)

DATA = Path(__file__).parent / "data"
SEED_FILES = [DATA / "blue-circle.dcm", DATA / "green-square.dcm", DATA / "red-triangle.dcm"]
STUDY = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
SERIES_1 = "1.2.826.0.1.3680043.8.498.77033797676425927098669402985243398207"
SERIES_2 = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
SOPS = {
    "blue-circle.dcm": "1.2.826.0.1.3680043.8.498.13273713909719068980354078852867170114",
    "green-square.dcm": "1.2.826.0.1.3680043.8.498.12714725698140337137334606354172323212",
    "red-triangle.dcm": "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395",
}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BOUNDARY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart_body(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    delimiter = f"--{boundary}".encode()
    out = io.BytesIO()
    for part in parts:
        out.write(delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n")
    out.write(delimiter + b"--\r\n")
    return out.getvalue()


def stow_headers(boundary: str = BOUNDARY, *, quoted: bool = True) -> dict[str, str]:
    value = f'"{boundary}"' if quoted else boundary
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={value}'}


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related response (the boundary is a random hex token)."""
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    delimiter = b"--" + content_type.rsplit("boundary=", 1)[1].encode()
    body = response.content
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, data = raw.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


def raw_exchange(port: int, request: bytes, *, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while read_until_close:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy from the environment must not intercept loopback requests.
    with httpx.Client(timeout=30, trust_env=False) as c:
        yield c


def store_seed(server: LoopbackServer, client: httpx.Client) -> httpx.Response:
    body = multipart_body([path.read_bytes() for path in SEED_FILES])
    response = client.post(f"{server.url}/studies", content=body, headers=stow_headers())
    assert response.status_code == 200, response.text
    return response


# ---- STOW-RS --------------------------------------------------------------------------------


@pytest.mark.parametrize("quoted", [True, False])
def test_stow_multipart_records_parts_and_answers_dicom_json(
    server: LoopbackServer, client: httpx.Client, quoted: bool
) -> None:
    files = [path.read_bytes() for path in SEED_FILES]
    body = multipart_body(files)
    response = client.post(
        f"{server.url}/studies", content=body, headers=stow_headers(quoted=quoted)
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    assert answer["00081190"] == {"vr": "UR", "Value": [f"{server.url}/studies/{STUDY}"]}
    items = answer["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in items] == list(SOPS.values())
    assert all(item["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.7"] for item in items)
    assert items[0]["00081190"]["Value"] == [
        f"{server.url}/studies/{STUDY}/series/{SERIES_1}/instances/{SOPS['blue-circle.dcm']}"
    ]
    assert "00081198" not in answer

    (record,) = server.requests
    assert (record.method, record.path, record.status) == ("POST", "/studies", 200)
    assert record.body_size == len(body)
    assert record.body_sha256 == sha256(body)
    assert [(p.size, p.sha256, p.sop_uid) for p in record.parts] == [
        (len(data), sha256(data), SOPS[path.name])
        for path, data in zip(SEED_FILES, files, strict=True)
    ]
    assert all(p.content_type == "application/dicom" for p in record.parts)

    registry = server.registry()
    assert set(registry) == {STUDY}
    assert set(registry[STUDY]) == {SERIES_1, SERIES_2}
    for path, data in zip(SEED_FILES, files, strict=True):
        instance = server.get_instance(SOPS[path.name])
        assert instance is not None
        assert instance.size == len(data)
        assert instance.sha256 == sha256(data)
        assert instance.transfer_syntax == EXPLICIT_LE
        assert instance.path is not None
        assert instance.path.name == f"{SOPS[path.name]}.dcm"
        assert instance.path.read_bytes() == data
    assert server.storage_dir is not None
    assert not list(server.storage_dir.glob(".incoming-*"))


def test_stow_to_study_with_prefix(tmp_path: Path, client: httpx.Client) -> None:
    with LoopbackServer(prefix="/dicom-web", storage_dir=tmp_path) as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}/dicom-web"
        body = multipart_body([SEED_FILES[0].read_bytes()])
        response = client.post(f"{srv.url}/studies/{STUDY}", content=body, headers=stow_headers())
        assert response.status_code == 200
        assert response.json()["00081190"]["Value"] == [f"{srv.url}/studies/{STUDY}"]
        outside = client.post(f"{srv.origin}/studies", content=body, headers=stow_headers())
        assert outside.status_code == 404
        assert srv.errors == []


def test_stow_single_part_application_dicom(server: LoopbackServer, client: httpx.Client) -> None:
    data = SEED_FILES[1].read_bytes()
    response = client.post(
        f"{server.url}/studies", content=data, headers={"Content-Type": "application/dicom"}
    )
    assert response.status_code == 200
    assert response.json()["00081199"]["Value"][0]["00081155"]["Value"] == [
        SOPS["green-square.dcm"]
    ]
    (part,) = server.requests[0].parts
    assert (part.size, part.sha256) == (len(data), sha256(data))


def test_stow_chunked_upload_from_a_generator(
    server: LoopbackServer, client: httpx.Client
) -> None:
    body = multipart_body([path.read_bytes() for path in SEED_FILES])

    def pieces() -> Iterator[bytes]:
        # Odd piece sizes put boundaries and headers across chunk edges.
        for start in range(0, len(body), 65_521):
            yield body[start : start + 65_521]

    response = client.post(f"{server.url}/studies", content=pieces(), headers=stow_headers())
    assert response.status_code == 200
    record = server.requests[0]
    assert record.header("transfer-encoding") == "chunked"
    assert record.header("content-length") is None
    assert (record.body_size, record.body_sha256) == (len(body), sha256(body))
    assert [p.sop_uid for p in record.parts] == list(SOPS.values())


def test_stow_raw_chunked_with_extensions_and_trailers(server: LoopbackServer) -> None:
    body = multipart_body([SEED_FILES[2].read_bytes()])
    chunks = [body[:1000], body[1000:1001], body[1001:]]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    request = (
        b"POST /studies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n"
        + f"Content-Type: {stow_headers(quoted=False)['Content-Type']}\r\n\r\n".encode()
        + encoded
        + b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    reply = raw_exchange(server.port, request)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.requests[0].parts[0].sop_uid == SOPS["red-triangle.dcm"]


def test_broken_chunked_framing_answers_400_and_closes(server: LoopbackServer) -> None:
    request = (
        b"POST /studies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: {stow_headers()['Content-Type']}\r\n\r\n".encode()
        + b"zz\r\nhello\r\n0\r\n\r\n"
    )
    reply = raw_exchange(server.port, request)  # returns once the server closes
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in reply


def test_stow_implicit_vr_instance(server: LoopbackServer, client: httpx.Client) -> None:
    ds = pydicom.dcmread(SEED_FILES[2])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    data = dataset_bytes(ds)
    response = client.post(
        f"{server.url}/studies/{STUDY}", content=multipart_body([data]), headers=stow_headers()
    )
    assert response.status_code == 200
    instance = server.get_instance(SOPS["red-triangle.dcm"])
    assert instance is not None
    assert (instance.transfer_syntax, instance.series_uid) == ("1.2.840.10008.1.2", SERIES_2)
    (part,) = split_multipart(client.get(f"{server.url}/studies/{STUDY}"))
    assert part[0]["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2"
    assert part[1] == data


def test_stow_non_dicom_parts_fail_with_272(server: LoopbackServer, client: httpx.Client) -> None:
    only_junk = multipart_body([b"this is not DICOM at all", os.urandom(1000)])
    response = client.post(f"{server.url}/studies", content=only_junk, headers=stow_headers())
    assert response.status_code == 409
    failures = response.json()["00081198"]["Value"]
    assert [f["00081197"] for f in failures] == [{"vr": "US", "Value": [PROCESSING_FAILURE]}] * 2
    assert "00081199" not in response.json()

    mixed = multipart_body([b"junk", SEED_FILES[0].read_bytes()])
    response = client.post(f"{server.url}/studies", content=mixed, headers=stow_headers())
    assert response.status_code == 202
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1
    assert answer["00081198"]["Value"] == [{"00081197": {"vr": "US", "Value": [0x0110]}}]
    assert [p.sop_uid for p in server.requests[1].parts] == [None, SOPS["blue-circle.dcm"]]
    assert server.storage_dir is not None
    assert sorted(p.name for p in server.storage_dir.iterdir()) == [
        f"{SOPS['blue-circle.dcm']}.dcm"
    ]


def test_stow_study_mismatch_fails_with_a911(server: LoopbackServer, client: httpx.Client) -> None:
    body = multipart_body([SEED_FILES[0].read_bytes()])
    response = client.post(f"{server.url}/studies/1.2.3.4", content=body, headers=stow_headers())
    assert response.status_code == 409
    (failure,) = response.json()["00081198"]["Value"]
    assert failure["00081197"] == {"vr": "US", "Value": [STUDY_MISMATCH]}
    assert failure["00081155"]["Value"] == [SOPS["blue-circle.dcm"]]
    assert server.registry() == {}


def test_duplicate_policy(server: LoopbackServer, client: httpx.Client) -> None:
    store_seed(server, client)
    again = client.post(
        f"{server.url}/studies",
        content=multipart_body([SEED_FILES[0].read_bytes()]),
        headers=stow_headers(),
    )
    assert again.status_code == 200  # "accept", like Orthanc

    server.duplicate_policy = "conflict"
    body = multipart_body([SEED_FILES[0].read_bytes()])
    conflict = client.post(f"{server.url}/studies", content=body, headers=stow_headers())
    assert conflict.status_code == 409
    (failure,) = conflict.json()["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [DUPLICATE_INSTANCE]

    partial = client.post(
        f"{server.url}/studies",
        content=multipart_body([SEED_FILES[0].read_bytes(), make_instance_bytes(2048)]),
        headers=stow_headers(),
    )
    assert partial.status_code == 202
    instance = server.get_instance(SOPS["blue-circle.dcm"])
    assert instance is not None and instance.path is not None and instance.path.exists()


def test_stow_bad_requests_keep_the_connection_usable(
    server: LoopbackServer, client: httpx.Client
) -> None:
    no_boundary = {"Content-Type": 'multipart/related; type="application/dicom"'}
    assert (
        client.post(f"{server.url}/studies", content=b"x", headers=no_boundary).status_code == 400
    )
    wrong_type = {"Content-Type": "application/json"}
    assert (
        client.post(f"{server.url}/studies", content=b"{}", headers=wrong_type).status_code == 415
    )
    truncated = multipart_body([SEED_FILES[0].read_bytes()])[:-30]
    response = client.post(f"{server.url}/studies", content=truncated, headers=stow_headers())
    assert response.status_code == 400
    store_seed(server, client)
    assert len({r.connection for r in server.requests}) == 1
    assert server.storage_dir is not None
    assert not list(server.storage_dir.glob(".incoming-*"))


# ---- WADO-RS --------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_retrieve_study_in_each_framing(
    server: LoopbackServer, client: httpx.Client, framing: str
) -> None:
    store_seed(server, client)
    server.framing = framing  # type: ignore[assignment]
    response = client.get(
        f"{server.url}/studies/{STUDY}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200
    if framing == "length":
        assert response.headers["content-length"] == str(len(response.content))
    elif framing == "chunked":
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
    else:
        assert response.headers["connection"] == "close"
        assert "content-length" not in response.headers
        assert "transfer-encoding" not in response.headers

    parts = split_multipart(response)
    expected = {SOPS[path.name]: path.read_bytes() for path in SEED_FILES}
    assert len(parts) == 3
    for headers, data in parts:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        assert headers["content-length"] == str(len(data))
        sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        assert data == expected[sop]
    assert server.requests[-1].response_body_bytes == len(response.content)


def test_keep_alive_depends_on_framing(server: LoopbackServer, client: httpx.Client) -> None:
    server.add_synthetic_study("1.2.3", 2, 10_000)
    for framing in ("length", "chunked", "length", "close", "close"):
        server.framing = framing
        assert client.get(f"{server.url}/studies/1.2.3").status_code == 200
    connections = [r.connection for r in server.requests]
    assert connections[0] == connections[1] == connections[2] == connections[3]
    assert connections[4] != connections[3]


def test_retrieve_series_instance_and_single_part(
    server: LoopbackServer, client: httpx.Client
) -> None:
    store_seed(server, client)
    series = client.get(f"{server.url}/studies/{STUDY}/series/{SERIES_2}")
    assert len(split_multipart(series)) == 2

    sop = SOPS["blue-circle.dcm"]
    url = f"{server.url}/studies/{STUDY}/series/{SERIES_1}/instances/{sop}"
    (part,) = split_multipart(client.get(url))
    assert part[1] == SEED_FILES[0].read_bytes()

    single = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.status_code == 200
    assert single.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert single.content == SEED_FILES[0].read_bytes()

    # Orthanc's spelling, with transfer-syntax inside the quoted type parameter.
    orthanc = client.get(
        url,
        headers={
            "Accept": f'multipart/related; type="application/dicom; transfer-syntax={EXPLICIT_LE}"'
        },
    )
    assert orthanc.status_code == 200


def test_retrieve_errors(server: LoopbackServer, client: httpx.Client) -> None:
    store_seed(server, client)
    assert client.get(f"{server.url}/studies/9.9.9").status_code == 404
    assert client.get(f"{server.url}/studies/{STUDY}/series/9.9").status_code == 404
    assert (
        client.get(f"{server.url}/studies/{STUDY}/series/{SERIES_1}/instances/9").status_code
        == 404
    )
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert client.get(f"{server.url}/studies/{STUDY}", headers={"Accept": jpeg}).status_code == 406
    assert (
        client.get(f"{server.url}/studies/{STUDY}", headers={"Accept": "image/png"}).status_code
        == 406
    )


def test_instances_stored_without_storage_dir_are_not_retrievable(client: httpx.Client) -> None:
    with LoopbackServer() as srv:
        store_seed(srv, client)
        instance = srv.get_instance(SOPS["green-square.dcm"])
        assert instance is not None
        assert instance.path is None and not instance.available
        assert instance.sha256 == sha256(SEED_FILES[1].read_bytes())
        assert client.get(f"{srv.url}/studies/{STUDY}").status_code == 404
        assert srv.errors == []


# ---- synthetic instances ---------------------------------------------------------------------


def test_synthetic_study_sizes_uids_and_series(
    server: LoopbackServer, client: httpx.Client
) -> None:
    size = 3 * 1024 * 1024 + 2
    sops = server.add_synthetic_study("1.2.826.0.1.3680043.8.498.7", 4, size, series_per_study=2)
    assert len(set(sops)) == 4
    registry = server.registry()["1.2.826.0.1.3680043.8.498.7"]
    assert [len(instances) for instances in registry.values()] == [2, 2]

    for framing in ("length", "chunked", "close"):
        server.framing = framing
        response = client.get(f"{server.url}/studies/1.2.826.0.1.3680043.8.498.7")
        parts = split_multipart(response)
        assert [len(data) for _, data in parts] == [size] * 4
        for (headers, data), sop in zip(parts, sops, strict=True):
            assert headers["content-length"] == str(size)
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.SOPInstanceUID == sop
            assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.7"
            assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
            assert ds.PatientID == "LOOPBACK"
            instance = server.get_instance(sop)
            assert instance is not None
            assert instance.sha256 == sha256(data)
            assert instance.read_bytes() == data

    # Same study UID, same UIDs in every run; adding more continues the numbering.
    with LoopbackServer() as other:
        assert other.add_synthetic_study("1.2.826.0.1.3680043.8.498.7", 4, 1024) == sops
        assert len(set(other.add_synthetic_study("1.2.826.0.1.3680043.8.498.7", 2, 1024))) == 2
        assert len(other.instances("1.2.826.0.1.3680043.8.498.7")) == 6


def test_synthetic_size_validation(server: LoopbackServer) -> None:
    with pytest.raises(ValueError, match="even"):
        server.add_synthetic_study("1.2.3", 1, 100_001)
    with pytest.raises(ValueError, match="header"):
        server.add_synthetic_study("1.2.3", 1, 64)


def test_make_instance_bytes_and_files(tmp_path: Path, client: httpx.Client) -> None:
    data = make_instance_bytes(5000, study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    assert len(data) == 5000
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        "1.2.3",
        "1.2.3.4",
        "1.2.3.4.5",
    )
    assert len(ds.PixelData) == 5000 - (len(data) - len(ds.PixelData))

    paths = write_instance_files(tmp_path / "files", 3, 200_000, study_uid="1.2.3.9")
    assert [p.stat().st_size for p in paths] == [200_000] * 3
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    assert {p.stem for p in paths} == uids

    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        body = multipart_body([p.read_bytes() for p in paths])
        response = client.post(f"{srv.url}/studies/1.2.3.9", content=body, headers=stow_headers())
        assert response.status_code == 200
        assert [p.size for p in srv.requests[0].parts] == [200_000] * 3
        # Files registered in place are served but never deleted by the server.
        sop = srv.add_file(paths[0])
        assert srv.get_instance(sop) is not None
        assert client.delete(f"{srv.url}/studies/1.2.3.9").status_code == 204
        assert paths[0].exists()
        assert srv.errors == []


def test_add_instance_bytes_serves_from_memory(
    server: LoopbackServer, client: httpx.Client
) -> None:
    data = make_instance_bytes(4096, study_uid="1.2.5", series_uid="1.2.5.1", sop_uid="1.2.5.1.1")
    assert server.add_instance_bytes(data) == "1.2.5.1.1"
    single = client.get(
        f"{server.url}/studies/1.2.5/series/1.2.5.1/instances/1.2.5.1.1",
        headers={"Accept": "application/dicom"},
    )
    assert single.content == data


# ---- DELETE, QIDO, routing ---------------------------------------------------------------------


def test_delete_levels(server: LoopbackServer, client: httpx.Client) -> None:
    store_seed(server, client)
    sop = SOPS["blue-circle.dcm"]
    instance_url = f"{server.url}/studies/{STUDY}/series/{SERIES_1}/instances/{sop}"
    stored = server.get_instance(sop)
    assert stored is not None and stored.path is not None
    assert client.delete(instance_url).status_code == 204
    assert client.delete(instance_url).status_code == 404
    assert not stored.path.exists()
    assert client.get(instance_url).status_code == 404

    assert client.delete(f"{server.url}/studies/{STUDY}/series/{SERIES_2}").status_code == 204
    assert server.registry() == {}
    assert client.delete(f"{server.url}/studies/{STUDY}").status_code == 404
    store_seed(server, client)
    assert client.delete(f"{server.url}/studies/{STUDY}").status_code == 204
    assert server.registry() == {}


def test_qido_from_the_registry(server: LoopbackServer, client: httpx.Client) -> None:
    store_seed(server, client)
    server.add_synthetic_study("1.2.3", 3, 2048)
    studies = client.get(f"{server.url}/studies").json()
    assert {s["0020000D"]["Value"][0] for s in studies} == {STUDY, "1.2.3"}
    series = client.get(f"{server.url}/studies/{STUDY}/series").json()
    assert {s["0020000E"]["Value"][0] for s in series} == {SERIES_1, SERIES_2}
    instances = client.get(
        f"{server.url}/instances", params={"StudyInstanceUID": STUDY, "limit": "2"}
    ).json()
    assert len(instances) == 2
    one = client.get(
        f"{server.url}/studies/{STUDY}/series/{SERIES_2}/instances",
        params={"00080018": SOPS["red-triangle.dcm"]},
    ).json()
    assert [i["00080018"]["Value"][0] for i in one] == [SOPS["red-triangle.dcm"]]


def test_routing_errors(server: LoopbackServer, client: httpx.Client) -> None:
    assert client.get(f"{server.url}/nothing").status_code == 404
    assert client.get(f"{server.url}/studies/1/metadata").status_code == 404
    response = client.put(f"{server.url}/studies/1.2.3", content=b"")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]
    assert client.post(f"{server.url}/studies/1/series/2", content=b"").status_code == 405
    assert client.delete(f"{server.url}/studies").status_code == 405


def test_expect_100_continue(server: LoopbackServer) -> None:
    body = multipart_body([SEED_FILES[0].read_bytes()])
    head = (
        b"POST /studies HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
        + f"Content-Type: {stow_headers()['Content-Type']}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")


# ---- fault knobs -----------------------------------------------------------------------------


def test_fail_next_with_retry_after(server: LoopbackServer, client: httpx.Client) -> None:
    server.fail_next(2, status=503, retry_after=1, body=b"busy")
    body = multipart_body([SEED_FILES[0].read_bytes()])
    for _ in range(2):
        response = client.post(f"{server.url}/studies", content=body, headers=stow_headers())
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.content == b"busy"
    assert server.registry() == {}  # refused requests store nothing
    assert server.requests[0].body_size == len(body)
    assert server.requests[0].body_sha256 == sha256(body)
    assert (
        client.post(f"{server.url}/studies", content=body, headers=stow_headers()).status_code
        == 200
    )

    server.fail_next(1, status=429, retry_after=0.25, method="GET")
    server.fail_next(1, status=500, retry_after=None)
    assert (
        client.post(f"{server.url}/studies", content=body, headers=stow_headers()).status_code
        == 500
    )
    throttled = client.get(f"{server.url}/studies/{STUDY}")
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "0.25"
    assert client.get(f"{server.url}/studies/{STUDY}").status_code == 200
    assert [r.status for r in server.requests] == [503, 503, 200, 500, 429, 200]
    assert "retry-after" not in {k.lower() for k, _ in server.requests[3].headers}


def test_drop_next_response_after(server: LoopbackServer, client: httpx.Client) -> None:
    store_seed(server, client)
    server.drop_next_response_after(100_000)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{server.url}/studies/{STUDY}")
    record = server.requests[-1]
    assert (record.status, record.response_body_bytes, record.aborted) == (200, 100_000, True)

    server.framing = "close"
    server.drop_next_response_after(5000)
    reply = raw_exchange(server.port, f"GET /studies/{STUDY} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert len(body) == 5000

    # Only the next one is cut.
    assert client.get(f"{server.url}/studies/{STUDY}").status_code == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_drop_response_at_zero_bytes(
    server: LoopbackServer, client: httpx.Client, framing: str
) -> None:
    server.add_synthetic_study("1.2.3", 1, 4096)
    server.framing = framing  # type: ignore[assignment]
    server.drop_next_response_after(0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{server.url}/studies/1.2.3")


def test_drop_next_request_after(server: LoopbackServer, client: httpx.Client) -> None:
    server.drop_next_request_after(300_000)
    body = multipart_body([path.read_bytes() for path in SEED_FILES])
    with pytest.raises(httpx.TransportError):
        client.post(f"{server.url}/studies", content=body, headers=stow_headers())
    record = server.requests[0]
    assert (record.status, record.body_size, record.aborted) == (None, 300_000, True)
    assert server.registry() == {}
    store_seed(server, client)


def test_require_auth(server: LoopbackServer, client: httpx.Client) -> None:
    server.require_auth("Bearer good")
    server.fail_next(1)
    refused = client.get(f"{server.url}/studies")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert (
        client.get(f"{server.url}/studies", headers={"Authorization": "Bearer bad"}).status_code
        == 401
    )
    # The refused requests did not use up the pending failure.
    assert (
        client.get(f"{server.url}/studies", headers={"Authorization": "Bearer good"}).status_code
        == 503
    )

    seen: list[str | None] = []

    def check(value: str | None) -> bool:
        seen.append(value)
        return value is not None and value.startswith("Bearer token-")

    server.require_auth(check)
    assert (
        client.get(
            f"{server.url}/studies", headers={"Authorization": "Bearer token-2"}
        ).status_code
        == 200
    )
    assert client.get(f"{server.url}/studies").status_code == 401
    assert seen == ["Bearer token-2", None]
    server.require_auth(None)
    assert client.get(f"{server.url}/studies").status_code == 200


# ---- concurrency, latency, lifecycle ----------------------------------------------------------


def test_latency_and_max_in_flight(server: LoopbackServer) -> None:
    server.add_synthetic_study("1.2.3", 1, 4096)
    server.latency = 0.5
    statuses: list[int] = []

    def fetch() -> None:
        with httpx.Client(trust_env=False) as c:
            statuses.append(c.get(f"{server.url}/studies/1.2.3").status_code)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert statuses == [200] * 4
    assert server.max_in_flight == 4
    assert elapsed >= 0.5
    # The server thread counts a request out after its last byte is sent, which may be
    # just after the client has read it.
    deadline = time.monotonic() + 5
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.in_flight == 0

    server.reset_stats()
    assert (server.requests, server.max_in_flight) == ([], 0)


async def test_usable_from_asyncio_code(server: LoopbackServer) -> None:
    server.add_synthetic_study("1.2.3", 2, 1 << 20)
    async with (
        httpx.AsyncClient(trust_env=False) as c,
        c.stream("GET", f"{server.url}/studies/1.2.3") as r,
    ):
        total = 0
        async for chunk in r.aiter_bytes():
            total += len(chunk)
    assert total > 2 << 20


def test_usable_from_trio_code(server: LoopbackServer) -> None:
    server.add_synthetic_study("1.2.3", 1, 4096)

    async def fetch() -> int:
        async with httpx.AsyncClient(trust_env=False) as c:
            return (await c.get(f"{server.url}/studies/1.2.3")).status_code

    assert trio.run(fetch) == 200


def test_stop_closes_idle_keep_alive_connections(tmp_path: Path) -> None:
    srv = LoopbackServer().start()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"GET /studies HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK")
        srv.stop()
        assert sock.recv(1000) == b""
    srv.stop()  # a second stop is harmless


def test_command_line_server(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.loopback_server",
            "--port",
            "0",
            "--storage",
            str(tmp_path),
            "--synthetic",
            "1.2.3:3:64k",
            "--framing",
            "close",
            "--latency",
            "0.01",
            "--prefix",
            "/dicom-web",
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        assert url.endswith("/dicom-web")
        with httpx.Client(trust_env=False) as c:
            response = c.get(f"{url}/studies/1.2.3")
            assert response.headers["connection"] == "close"
            assert [len(d) for _, d in split_multipart(response)] == [65536] * 3
            studies = c.get(f"{url}/studies").json()
            assert json.dumps(studies).count("1.2.3") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        if process.stdout is not None:
            process.stdout.close()
