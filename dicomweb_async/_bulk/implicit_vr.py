"""Re-encoding implicit VR little endian files for servers that refuse them (Azure).

Unlike every other upload, a converted file is read whole into memory and encoded again.
"""

from __future__ import annotations

import io
from pathlib import Path

from .._core.media import EXPLICIT_VR_LITTLE_ENDIAN
from .._core.multipart_writer import dataset_bytes

__all__ = ["to_explicit_vr"]


def to_explicit_vr(source: Path | bytes) -> bytes:
    """Re-encode an implicit VR little endian file (or its bytes) as explicit VR little endian.

    Blocking and holds the whole file in memory; run it in a worker thread.
    """
    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    return dataset_bytes(ds)
