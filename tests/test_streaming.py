"""Streaming behaviour over real sockets, against the loopback DICOMweb server.

Mocked transports read request bodies whole and hand responses over in one piece, so they
cannot show what these tests check: request bodies replayed in full after a 401, a 503 or a
dropped connection; responses cut off mid-instance under each HTTP framing; memory that
stays flat while hundreds of megabytes stream through; the large-read network backend
(plain and TLS); cancellation mid-download; and the connection bound.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import os
import shutil
import ssl
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpcore
import httpx
import pydicom
import pytest

from dicomweb_async import (
    AsyncDICOMwebClient,
    DICOMwebError,
    HTTPStatusError,
    MultipartError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from dicomweb_async._transport.network import LargeReadBackend, install_large_reads
from tests.loopback_server import LoopbackServer, write_instance_files
from tests.relay import Relay

KIB = 1024
MIB = 1024 * KIB
STUDY = "1.2.826.0.1.3680043.8.498.990001"
NO_RETRY_DELAY = RetryPolicy(attempts=3, backoff=0.0)
FRAMINGS = ("length", "chunked", "close")

# Several instances, cut inside the second one (well past its part headers).
CUT_INSTANCES = 4
CUT_SIZE = 512 * KIB
CUT_AT = CUT_SIZE + CUT_SIZE // 2


# --------------------------------------------------------------------------------------------
# Helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def sop_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def sop_uid_of_bytes(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def files_under(root: Path) -> list[Path]:
    """Every file below ``root`` (hidden ones included), relative and sorted."""
    found = []
    for directory, _, names in os.walk(root):
        found.extend(Path(directory, name).relative_to(root) for name in names)
    return sorted(found)


def served(server: LoopbackServer, sop: str) -> bytes:
    instance = server.get_instance(sop)
    assert instance is not None
    return instance.read_bytes()


def expected_error(framing: str) -> tuple[type[DICOMwebError], ...]:
    # Without a length or chunk framing the cut is an ordinary EOF: only the missing
    # closing boundary can tell it apart from a complete answer.
    return (MultipartError,) if framing == "close" else (MultipartError, TransportError)


def token_sequence(*tokens: str) -> tuple[list[str], Callable[[], Awaitable[str]]]:
    """An async token provider returning ``tokens`` in turn, and the list of handed-out ones."""
    handed: list[str] = []

    async def provider() -> str:
        token = tokens[min(len(handed), len(tokens) - 1)]
        handed.append(token)
        return token

    return handed, provider


class PeakMemory:
    """Peak of Python allocations (tracemalloc) inside a ``with`` block, in bytes.

    tracemalloc sees every thread, so the loopback server's own buffers count too: the
    figure is an upper bound on what the client holds.
    """

    peak = 0

    def __enter__(self) -> PeakMemory:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        self._baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1] - self._baseline
        if not self._was_tracing:
            tracemalloc.stop()


def raw_get(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        'Accept: multipart/related; type="application/dicom"\r\n'
        "Connection: close\r\n\r\n"
    ).encode("ascii")


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for 127.0.0.1 from a throwaway CA."""
    pytest.importorskip(
        "cryptography", reason="the TLS sub-test needs 'cryptography' to make a certificate"
    )
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streaming tests CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    return server_context, client_context


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def storing_server(tmp_path: Path) -> Iterator[LoopbackServer]:
    with LoopbackServer(storage_dir=tmp_path / "store") as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def cut_study(server: LoopbackServer) -> list[str]:
    return server.add_synthetic_study(STUDY, CUT_INSTANCES, CUT_SIZE)


# --------------------------------------------------------------------------------------------
# Request bodies are replayed in full; retries stop where they should


@pytest.mark.parametrize("fault", ["401", "503", "dropped"])
async def test_upload_is_replayed_in_full_after_a_fault(
    fault: str, storing_server: LoopbackServer, seed_files: list[Path], tmp_path: Path
) -> None:
    server = storing_server
    handed, provider = token_sequence("t1", "t2")
    auth = None
    if fault == "401":
        server.require_auth("Bearer t2")
        auth = provider
    elif fault == "503":
        server.fail_next(1, 503, retry_after=0)
    else:
        server.drop_next_request_after(100_000, method="POST")

    async with AsyncDICOMwebClient(server.url, auth=auth, retry=NO_RETRY_DELAY) as client:
        result = await client.store_instances(seed_files)

    sops = [sop_uid_of(path) for path in seed_files]
    assert result.ok
    assert sorted(o.sop_instance_uid for o in result.stored) == sorted(sops)
    first, second = server.requests
    assert first.method == second.method == "POST"
    full_size = int(second.header("Content-Length") or -1)
    assert second.body_size == full_size
    assert second.status == 200
    if fault == "dropped":
        assert first.aborted and first.status is None
        assert first.body_size == 100_000 < full_size
    else:
        assert first.status == int(fault)
        assert first.body_size == full_size
        assert first.body_sha256 == second.body_sha256
    if fault == "401":
        assert handed == ["t1", "t2"]
        assert first.header("Authorization") == "Bearer t1"
        assert second.header("Authorization") == "Bearer t2"
    # Every part of the replayed body was re-read from disk, whole.
    assert [(p.size, p.sha256) for p in second.parts] == [
        (path.stat().st_size, sha256_file(path)) for path in seed_files
    ]
    for path, sop in zip(seed_files, sops, strict=True):
        assert served(server, sop) == path.read_bytes()
    # The refused or dropped attempt stored nothing of its own.
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(
        f"{sop}.dcm" for sop in sops
    )


async def test_a_400_is_not_retried(server: LoopbackServer, seed_files: list[Path]) -> None:
    server.fail_next(1, 400)
    async with AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY) as client:
        with pytest.raises(HTTPStatusError) as info:
            await client.store_instances(seed_files)
    assert info.value.status_code == 400
    assert len(server.requests) == 1
    assert server.registry() == {}


async def test_retries_stop_after_the_last_attempt(
    server: LoopbackServer, seed_files: list[Path]
) -> None:
    server.fail_next(5, 503, retry_after=0)
    async with AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY) as client:
        with pytest.raises(ServerError) as info:
            await client.store_instances(seed_files)
    assert info.value.status_code == 503
    records = server.requests
    assert [r.status for r in records] == [503, 503, 503]
    assert len({(r.body_size, r.body_sha256) for r in records}) == 1
    assert server.registry() == {}


# --------------------------------------------------------------------------------------------
# Responses cut off inside the second instance never end quietly


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_retrieve_study_cut_short_raises(
    framing: str, server: LoopbackServer, cut_study: list[str]
) -> None:
    server.framing = framing  # type: ignore[assignment]
    server.drop_next_response_after(CUT_AT)
    async with AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY) as client:
        with pytest.raises(DICOMwebError) as info:
            await client.retrieve_study(STUDY)
    assert isinstance(info.value, expected_error(framing))
    [record] = server.requests
    assert record.aborted and record.response_body_bytes == CUT_AT


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_iter_study_cut_short_yields_the_first_instance_then_raises(
    framing: str, server: LoopbackServer, cut_study: list[str]
) -> None:
    server.framing = framing  # type: ignore[assignment]
    server.drop_next_response_after(CUT_AT)
    received = []
    async with AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY) as client:
        with pytest.raises(DICOMwebError) as info:
            async with client.iter_study(STUDY) as datasets:
                async for ds in datasets:
                    received.append(ds.SOPInstanceUID)
    assert isinstance(info.value, expected_error(framing))
    assert received == cut_study[:1]


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_download_study_cut_short_keeps_only_complete_files(
    framing: str, server: LoopbackServer, cut_study: list[str], tmp_path: Path
) -> None:
    server.framing = framing  # type: ignore[assignment]
    server.drop_next_response_after(CUT_AT)
    target = tmp_path / "download"
    async with AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY) as client:
        with pytest.raises(DICOMwebError) as info:
            await client.download_study(STUDY, target)
    assert isinstance(info.value, expected_error(framing))
    first = server.get_instance(cut_study[0])
    assert first is not None
    expected = Path(STUDY, first.series_uid, f"{cut_study[0]}.dcm")
    assert files_under(target) == [expected]  # no partial file, hidden or not
    assert (target / expected).read_bytes() == first.read_bytes()


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_stream_study_cut_short_fails_inside_the_second_part(
    framing: str, server: LoopbackServer, cut_study: list[str]
) -> None:
    server.framing = framing  # type: ignore[assignment]
    server.drop_next_response_after(CUT_AT)
    received = 0
    client = AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY)
    async with client, client.stream_study(STUDY) as parts:
        stream = aiter(parts)
        first = await anext(stream)
        assert await first.read() == served(server, cut_study[0])
        second = await anext(stream)
        with pytest.raises(DICOMwebError) as info:
            async for chunk in second.aiter_bytes():
                received += len(chunk)
    assert isinstance(info.value, expected_error(framing))
    assert 0 < received < CUT_SIZE
    assert second.size is None


async def delimiters(server: LoopbackServer) -> list[tuple[int, int]]:
    """(start, end) body offsets of each part's delimiter line in the server's answer."""
    async with httpx.AsyncClient() as plain:
        response = await plain.get(
            f"{server.url}/studies/{STUDY}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
    boundary = response.headers["content-type"].rsplit("boundary=", 1)[1].strip('"')
    delimiter = f"--{boundary}\r\n".encode("ascii")
    body = response.content
    found = []
    position = body.find(delimiter)
    while position >= 0:
        found.append((position, position + len(delimiter)))
        position = body.find(delimiter, position + 1)
    return found


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_study_cut_between_parts_raises(
    framing: str, server: LoopbackServer, cut_study: list[str]
) -> None:
    found = await delimiters(server)
    assert len(found) == CUT_INSTANCES
    second_start, second_end = found[1]
    server.reset_stats()
    server.framing = framing  # type: ignore[assignment]
    received = []
    async with AsyncDICOMwebClient(server.url, retry=NO_RETRY_DELAY) as client:
        # The first part is complete and the second has begun; none of its headers came.
        server.drop_next_response_after(second_end)
        with pytest.raises(DICOMwebError) as info:
            async with client.iter_study(STUDY) as datasets:
                async for ds in datasets:
                    received.append(ds.SOPInstanceUID)
        assert isinstance(info.value, expected_error(framing))
        assert received == cut_study[:1]
        # Cut exactly after the first part's data, before the CRLF of the next delimiter.
        server.drop_next_response_after(second_start - 2)
        with pytest.raises(DICOMwebError) as info:
            await client.retrieve_study(STUDY)
        assert isinstance(info.value, expected_error(framing))
    assert [r.aborted for r in server.requests] == [True, True]


# --------------------------------------------------------------------------------------------
# Round trips through the real server


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_store_then_download_round_trip(
    framing: str, storing_server: LoopbackServer, seed_files: list[Path], tmp_path: Path
) -> None:
    server = storing_server
    server.framing = framing  # type: ignore[assignment]
    originals = {sop_uid_of(path): path for path in seed_files}
    study = str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).StudyInstanceUID)
    target = tmp_path / "download"
    async with AsyncDICOMwebClient(server.url) as client:
        result = await client.store_instances(seed_files)
        assert result.ok and len(result.stored) == len(seed_files)
        saved = await client.download_study(study, target)
        datasets = await client.retrieve_study(study)

    assert sorted(item.sop_instance_uid for item in saved) == sorted(originals)
    for item in saved:
        assert item.path.read_bytes() == originals[item.sop_instance_uid].read_bytes()
        assert item.size == originals[item.sop_instance_uid].stat().st_size
    assert len(files_under(target)) == len(seed_files)
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(originals)


async def test_stream_study_parts_carry_type_syntax_and_length(
    server: LoopbackServer, seed_files: list[Path]
) -> None:
    sops = [server.add_file(path) for path in seed_files]
    study = str(pydicom.dcmread(seed_files[0], stop_before_pixels=True).StudyInstanceUID)
    seen = []
    async with AsyncDICOMwebClient(server.url) as client, client.stream_study(study) as parts:
        async for part in parts:
            data = await part.read()
            seen.append((part, data))
    assert len(seen) == len(seed_files)
    for part, data in seen:
        sop = sop_uid_of_bytes(data)
        instance = server.get_instance(sop)
        assert instance is not None
        content_type = part.headers.get("Content-Type") or ""
        assert content_type.startswith("application/dicom")
        assert f"transfer-syntax={instance.transfer_syntax}" in content_type
        assert part.transfer_syntax == instance.transfer_syntax
        assert part.headers.content_length == instance.size == len(data) == part.size
        assert data == instance.read_bytes()
    assert sorted(sop_uid_of_bytes(data) for _, data in seen) == sorted(sops)


@pytest.mark.parametrize("inline_limit", [0, 600 * KIB, 16 * MIB])
async def test_iter_study_decodes_small_parts_on_the_loop_and_large_ones_in_a_thread(
    inline_limit: int, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomweb_async._services import wado

    sops = server.add_synthetic_study(STUDY, 2, 100 * KIB)
    sops += server.add_synthetic_study(STUDY, 2, 1 * MIB)
    monkeypatch.setattr(wado, "INLINE_DECODE_BYTES", inline_limit)
    loop_thread = threading.get_ident()
    on_loop: dict[str, bool] = {}
    real_read = wado.read_dataset

    def recording_read(source: Any, what: str, **kwargs: Any) -> pydicom.Dataset:
        ds = real_read(source, what, **kwargs)
        on_loop[str(ds.SOPInstanceUID)] = threading.get_ident() == loop_thread
        return ds

    monkeypatch.setattr(wado, "read_dataset", recording_read)
    async with AsyncDICOMwebClient(server.url) as client:
        got = [ds async for ds in client.iter_study(STUDY)]
    assert [str(ds.SOPInstanceUID) for ds in got] == sops
    for sop, ds in zip(sops, got, strict=True):
        data = served(server, sop)
        assert ds == pydicom.dcmread(io.BytesIO(data))
        assert on_loop[sop] is (len(data) <= inline_limit)
    # Each limit splits the parts differently: none, the small ones, all of them.
    assert sum(on_loop.values()) == {0: 0, 600 * KIB: 2, 16 * MIB: 4}[inline_limit]


# --------------------------------------------------------------------------------------------
# Memory stays flat however much streams through


@pytest.mark.parametrize("disk", ["fast", "slow"])
async def test_download_study_memory_stays_flat(
    disk: str, server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sops = server.add_synthetic_study(STUDY, 128, 2 * MIB)  # 256 MiB
    expected = {sop: server.get_instance(sop).sha256 for sop in sops}  # type: ignore[union-attr]
    target = tmp_path / "download"
    slow_writes = []
    if disk == "slow":
        # A disk slower than the network: only backpressure keeps the received data bounded.
        real_write, real_writev = os.write, os.writev

        def write(fd: int, data: bytes) -> int:
            slow_writes.append(fd)
            time.sleep(0.004)
            return real_write(fd, data)

        def writev(fd: int, buffers: list[bytes]) -> int:
            slow_writes.append(fd)
            time.sleep(0.004)
            return real_writev(fd, buffers)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "writev", writev)
    try:
        async with AsyncDICOMwebClient(server.url) as client:
            with PeakMemory() as memory:
                saved = await client.download_study(STUDY, target)
        monkeypatch.undo()
        assert memory.peak < 48 * MIB, f"peak {memory.peak / MIB:.1f} MiB"
        assert (disk == "slow") == bool(slow_writes), "the download wrote without os.write[v]"
        assert [item.sop_instance_uid for item in saved] == sops
        for item in saved:
            assert item.size == 2 * MIB
            assert sha256_file(item.path) == expected[item.sop_instance_uid]
        assert len(files_under(target)) == len(sops)
    finally:
        shutil.rmtree(target, ignore_errors=True)


async def test_stream_study_memory_stays_flat(server: LoopbackServer) -> None:
    sops = server.add_synthetic_study(STUDY, 128, 2 * MIB)
    expected = [server.get_instance(sop).sha256 for sop in sops]  # type: ignore[union-attr]
    digests = []
    async with AsyncDICOMwebClient(server.url) as client:
        with PeakMemory() as memory:
            async with client.stream_study(STUDY) as parts:
                async for part in parts:
                    digest = hashlib.sha256()
                    async for chunk in part.aiter_bytes():
                        digest.update(chunk)
                    digests.append(digest.hexdigest())
    assert memory.peak < 16 * MIB, f"peak {memory.peak / MIB:.1f} MiB"
    assert digests == expected


async def test_store_instances_memory_stays_flat(server: LoopbackServer, tmp_path: Path) -> None:
    paths = write_instance_files(tmp_path / "upload", 64, 2 * MIB, study_uid=STUDY)
    try:
        async with AsyncDICOMwebClient(server.url) as client:
            with PeakMemory() as memory:
                result = await client.store_instances(paths)
        assert memory.peak < 16 * MIB, f"peak {memory.peak / MIB:.1f} MiB"
        assert result.ok and len(result.stored) == len(paths)
        [record] = server.requests
        assert [(p.size, p.sha256) for p in record.parts] == [
            (2 * MIB, sha256_file(path)) for path in paths
        ]
        stored = server.instances(STUDY)
        assert sorted(i.sop_uid for i in stored) == sorted(path.stem for path in paths)
        assert {i.size for i in stored} == {2 * MIB}
    finally:
        shutil.rmtree(tmp_path / "upload", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The large-read network backend


def pool_backend(client: AsyncDICOMwebClient) -> object:
    # Every shard of the httpcore engine gets the same backend type; look at the first.
    engines = client.http_client._transport  # type: ignore[attr-defined]
    transport = engines.transport_for(httpx.URL(client.base_url))
    return transport.shards[0]._pool._network_backend


@pytest.mark.parametrize("large_reads", [True, False])
async def test_large_reads_backend_is_installed_only_when_asked(
    large_reads: bool, server: LoopbackServer, tmp_path: Path
) -> None:
    sops = server.add_synthetic_study(STUDY, 3, 3 * MIB)
    target = tmp_path / "download"
    async with AsyncDICOMwebClient(
        server.url, large_reads=large_reads, engine="httpcore"
    ) as client:
        assert isinstance(pool_backend(client), LargeReadBackend) is large_reads
        saved = await client.download_study(STUDY, target)
    assert [item.sop_instance_uid for item in saved] == sops
    for item in saved:
        assert item.path.read_bytes() == served(server, item.sop_instance_uid)


async def test_large_reads_are_the_default(server: LoopbackServer) -> None:
    async with AsyncDICOMwebClient(server.url, engine="httpcore") as client:
        assert isinstance(pool_backend(client), LargeReadBackend)


async def test_install_large_reads_only_touches_httpcore_pools() -> None:
    async with httpx.AsyncClient() as plain:
        for thing in (None, object(), plain, httpcore.AnyIOBackend()):
            assert install_large_reads(thing) is False
    pool = httpcore.AsyncConnectionPool()
    try:
        assert install_large_reads(pool) is True
        backend = pool._network_backend
        assert isinstance(backend, LargeReadBackend)
        assert install_large_reads(pool) is True  # a second call does not wrap again
        assert pool._network_backend is backend
        assert not isinstance(backend.inner, LargeReadBackend)
    finally:
        await pool.aclose()


async def test_large_read_streams_read_more_than_asked(server: LoopbackServer) -> None:
    server.add_synthetic_study(STUDY, 1, 1 * MIB)
    request = raw_get(f"/studies/{STUDY}", server.port)
    sizes = {}
    for name, backend in (("plain", httpcore.AnyIOBackend()), ("large", LargeReadBackend())):
        stream = await backend.connect_tcp("127.0.0.1", server.port, timeout=10)
        try:
            await stream.write(request, timeout=10)
            first = await stream.read(1, timeout=10)
        finally:
            await stream.aclose()
        assert first.startswith(b"H")
        sizes[name] = len(first)
    assert sizes["plain"] == 1
    assert sizes["large"] > 1


async def test_large_reads_survive_start_tls(server: LoopbackServer, tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    sops = server.add_synthetic_study(STUDY, 3, 1 * MIB)
    async with Relay(server.port, ssl_context=server_context) as relay:
        # The wrapper's start_tls hands back a wrapped TLS stream that still reads large.
        backend = LargeReadBackend()
        stream = await backend.connect_tcp("127.0.0.1", relay.port, timeout=10)
        tls = await stream.start_tls(client_context, server_hostname="127.0.0.1", timeout=10)
        try:
            assert type(tls) is type(stream)
            assert tls.get_extra_info("ssl_object") is not None
            await tls.write(raw_get(f"/studies/{STUDY}", relay.port), timeout=10)
            first = await tls.read(1, timeout=10)
            assert first.startswith(b"HTTP/1.1 200")
        finally:
            await tls.aclose()

        # And a whole download over https through the client's own pool.
        target = tmp_path / "download"
        url = f"https://127.0.0.1:{relay.port}"
        async with AsyncDICOMwebClient(url, verify=client_context, engine="httpcore") as client:
            assert isinstance(pool_backend(client), LargeReadBackend)
            saved = await client.download_study(STUDY, target)
    assert [item.sop_instance_uid for item in saved] == sops
    for item in saved:
        assert item.path.read_bytes() == served(server, item.sop_instance_uid)


# --------------------------------------------------------------------------------------------
# Cancellation


async def wait_for_file(root: Path, pattern: str) -> None:
    """Poll until a file matching ``pattern`` exists below ``root`` (a rename has no event)."""
    while not await anyio.to_thread.run_sync(lambda: any(root.rglob(pattern))):  # noqa: ASYNC110
        await anyio.sleep(0.005)


async def test_cancelled_download_keeps_complete_files_only(
    server: LoopbackServer, cut_study: list[str], tmp_path: Path
) -> None:
    target = tmp_path / "download"
    # The relay forwards the first instance and half of the second, then stalls.
    relay = Relay(server.port, hold_after=CUT_AT)
    async with relay, AsyncDICOMwebClient(f"http://127.0.0.1:{relay.port}") as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.download_study, STUDY, target)
                await relay.held.wait()
                await wait_for_file(target, "*.dcm")
                tg.cancel_scope.cancel()
                # anyio before 4.6 counts a cancellation as caught only if it reached
                # this task, which this checkpoint makes sure of.
                await anyio.lowlevel.checkpoint()
        assert tg.cancel_scope.cancelled_caught
    first = server.get_instance(cut_study[0])
    assert first is not None
    expected = Path(STUDY, first.series_uid, f"{cut_study[0]}.dcm")
    assert files_under(target) == [expected]
    assert (target / expected).read_bytes() == first.read_bytes()


async def test_download_cancelled_before_the_answer_leaves_nothing(
    server: LoopbackServer, cut_study: list[str], tmp_path: Path
) -> None:
    server.latency = 30.0
    target = tmp_path / "download"
    async with AsyncDICOMwebClient(server.url) as client:
        with anyio.move_on_after(0.2) as scope:
            await client.download_study(STUDY, target)
    assert scope.cancelled_caught
    assert files_under(target) == []


# --------------------------------------------------------------------------------------------
# The connection bound holds under load


@pytest.mark.parametrize("operation", ["search", "retrieve_instance"])
async def test_concurrent_requests_respect_max_connections(
    operation: str, server: LoopbackServer
) -> None:
    sops = server.add_synthetic_study(STUDY, 20, 64 * KIB)
    first = server.get_instance(sops[0])
    assert first is not None
    series = first.series_uid
    server.latency = 0.05
    results: dict[int, object] = {}
    async with AsyncDICOMwebClient(server.url, max_connections=4) as client:

        async def one(index: int) -> None:
            if operation == "search":
                results[index] = await client.search_for_studies()
            else:
                ds = await client.retrieve_instance(STUDY, series, sops[index])
                results[index] = str(ds.SOPInstanceUID)

        async with anyio.create_task_group() as tg:
            for index in range(20):
                tg.start_soon(one, index)

    assert len(server.requests) == 20
    assert all(r.status == 200 for r in server.requests)
    assert 2 <= server.max_in_flight <= 4
    assert len({r.connection for r in server.requests}) <= 4
    if operation == "search":
        for answer in results.values():
            assert [study["0020000D"]["Value"] for study in answer] == [[STUDY]]  # type: ignore[attr-defined]
    else:
        assert [results[i] for i in range(20)] == sops
