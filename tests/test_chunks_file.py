"""``ChunksFile``: a DICOM file decoded from the pieces it arrived in, not joined first."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from dicomweb_async import ProtocolError
from dicomweb_async._core.datasets import ChunksFile, read_dataset


def split(data: bytes, rng: random.Random, most: int) -> list[bytes]:
    chunks, at = [], 0
    while at < len(data):
        step = rng.randint(1, most)
        chunks.append(data[at : at + step])
        at += step
    return chunks


@pytest.mark.parametrize("seed", range(20))
def test_reads_and_seeks_like_bytesio(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(0, 5000))
    chunks = split(data, rng, 700)
    # Empty chunks and other bytes-like pieces are accepted too.
    chunks.insert(rng.randint(0, len(chunks)), b"")
    if chunks:
        chunks[0] = bytearray(chunks[0])
    ours, theirs = ChunksFile(chunks), io.BytesIO(data)
    assert ours.seekable() and ours.readable()
    for _ in range(200):
        action = rng.random()
        if action < 0.2:
            offset = rng.randint(0, len(data) + 10)
            assert ours.seek(offset) == theirs.seek(offset)
        elif action < 0.3:
            offset = rng.randint(-ours.tell(), 50)
            assert ours.seek(offset, io.SEEK_CUR) == theirs.seek(offset, io.SEEK_CUR)
        elif action < 0.35:
            offset = rng.randint(-len(data), 5)
            assert ours.seek(offset, io.SEEK_END) == theirs.seek(offset, io.SEEK_END)
        elif action < 0.4:
            assert ours.read() == theirs.read()
        else:
            size = rng.choice([0, 1, 4, 8, rng.randint(0, 2000)])
            got = ours.read(size)
            assert type(got) is bytes
            assert got == theirs.read(size)
        assert ours.tell() == theirs.tell()


def test_readinto_and_bad_seeks() -> None:
    reader = ChunksFile([b"abc", b"def"])
    buffer = bytearray(4)
    assert reader.readinto(buffer) == 4
    assert buffer == b"abcd"
    assert reader.readinto(buffer) == 2
    assert buffer[:2] == b"ef"
    with pytest.raises(ValueError):
        reader.seek(-1)
    with pytest.raises(ValueError):
        reader.seek(0, 7)


def test_a_whole_chunk_is_returned_without_a_copy() -> None:
    first, second = b"x" * 100, b"y" * 100
    reader = ChunksFile([first, second])
    reader.seek(100)
    assert reader.read(100) is second


def test_decodes_the_same_dataset_as_bytes(seed_files: list[Path]) -> None:
    rng = random.Random(7)
    for path in seed_files:
        data = path.read_bytes()
        whole = read_dataset(data, "seed")
        pieces = read_dataset(ChunksFile(split(data, rng, 4096)), "seed")
        assert pieces == whole
        assert pieces.PixelData == whole.PixelData
        assert pieces.file_meta == whole.file_meta


def test_a_file_that_is_not_dicom_raises(seed_files: list[Path]) -> None:
    data = seed_files[0].read_bytes()
    broken = data[:128] + b"DICX" + data[132:]
    with pytest.raises(ProtocolError, match="part 0 is not a DICOM file"):
        read_dataset(ChunksFile([broken[:100], broken[100:]]), "part 0")


def test_a_dataset_does_not_keep_the_chunks(seed_files: list[Path]) -> None:
    data = seed_files[0].read_bytes()
    source = ChunksFile([data[:1000], data[1000:]])
    ds = read_dataset(source, "seed")
    # pydicom 3 keeps the file it read from (as ds.buffer): its chunks are let go.
    assert getattr(ds, "buffer", source) is source
    assert source.closed and source._chunks == []
    with pytest.raises(ValueError):
        source.read(1)
    assert ds.PixelData == read_dataset(data, "seed").PixelData
