"""dicomweb-async: a streaming asyncio client for DICOMweb servers.

The public API is everything named in ``__all__``; modules whose names start with an
underscore are private and may change without notice.
"""

import inspect as _inspect
import logging as _logging

from ._azure.admin import Partition
from ._azure.auth import AzureADAuth, azure_scope
from ._azure.changefeed import ChangeFeed, ChangeFeedCursor, ChangeFeedEntry
from ._azure.client import AzureDICOMwebClient
from ._azure.extended_query_tags import (
    ExtendedQueryTag,
    ExtendedQueryTagError,
    ExtendedQueryTagSpec,
)
from ._azure.operations import Operation, OperationReference, OperationState
from ._bulk.copy import CopyOutcome, CopyPipeline, CopyReport
from ._bulk.download import DownloadOutcome, DownloadPipeline, DownloadReport
from ._bulk.journal import Journal, JournalEntry
from ._bulk.progress import Progress, ProgressCallback
from ._bulk.upload import FileOutcome, UploadPipeline, UploadReport
from ._client.base import AuthLike
from ._client.client import AsyncDICOMwebClient
from ._client.copy import StudyDifference, copy_pipeline, copy_studies, verify_copy
from ._core.exceptions import (
    AuthenticationError,
    BulkTransferError,
    ConflictError,
    DICOMwebError,
    HTTPStatusError,
    MethodNotAllowedError,
    MultipartError,
    NotAcceptableError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ServerError,
    StoreFailedError,
    TimeoutError,
    TransportError,
)
from ._core.media import MediaType, parse_media_type
from ._core.multipart_reader import (
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    SinglePartReader,
)
from ._core.multipart_writer import BodyPart, MultipartWriter
from ._core.profiles import PROFILES, ServerProfile
from ._core.retry import RetryPolicy
from ._core.store_result import FailureReason, StoreOutcome, StoreResult
from ._core.workitems import Workitem
from ._services.download import DownloadedInstance
from ._services.wado import Frame, Metadata, ReaderLimits
from ._transport.auth import BearerAuth, TokenProvider
from ._transport.parts import Part, PartStream

__version__ = "0.1.0.dev0"

# A library leaves logging output to the application; without this, Python would print
# retry warnings on stderr by itself.
_logging.getLogger("dicomweb_async").addHandler(_logging.NullHandler())

__all__ = [
    "AsyncDICOMwebClient",
    "AuthLike",
    "AuthenticationError",
    "AzureADAuth",
    "AzureDICOMwebClient",
    "BearerAuth",
    "BodyPart",
    "BulkTransferError",
    "ChangeFeed",
    "ChangeFeedCursor",
    "ChangeFeedEntry",
    "ConflictError",
    "CopyOutcome",
    "CopyPipeline",
    "CopyReport",
    "DICOMwebError",
    "DownloadOutcome",
    "DownloadPipeline",
    "DownloadReport",
    "DownloadedInstance",
    "ExtendedQueryTag",
    "ExtendedQueryTagError",
    "ExtendedQueryTagSpec",
    "FailureReason",
    "FileOutcome",
    "Frame",
    "HTTPStatusError",
    "Journal",
    "JournalEntry",
    "MediaType",
    "Metadata",
    "MethodNotAllowedError",
    "MultipartError",
    "MultipartReader",
    "MultipartWriter",
    "NotAcceptableError",
    "NotFoundError",
    "Operation",
    "PROFILES",
    "OperationReference",
    "OperationState",
    "Part",
    "PartData",
    "PartEnd",
    "PartHeaders",
    "PartStart",
    "PartStream",
    "Partition",
    "PermissionDeniedError",
    "Progress",
    "ProgressCallback",
    "ProtocolError",
    "ReaderLimits",
    "RetryPolicy",
    "ServerError",
    "ServerProfile",
    "SinglePartReader",
    "StoreFailedError",
    "StoreOutcome",
    "StoreResult",
    "StudyDifference",
    "TimeoutError",
    "TokenProvider",
    "TransportError",
    "UploadPipeline",
    "UploadReport",
    "Workitem",
    "azure_scope",
    "copy_pipeline",
    "copy_studies",
    "parse_media_type",
    "verify_copy",
    "__version__",
]


def _present_as_public(namespace: dict[str, object], module: str) -> None:
    # Reprs, tracebacks and pickles name the public module (dicomweb_async.StoreResult), not
    # the private one a class happens to be defined in, which may move.
    names = namespace["__all__"]
    assert isinstance(names, list)
    for name in names:
        obj = namespace[name]
        # issubclass(type(obj), type), not isinstance(obj, type): on Python 3.10 a generic
        # alias such as ProgressCallback passes the latter, and its __module__ is read-only.
        if issubclass(type(obj), type) or _inspect.isfunction(obj):
            obj.__module__ = module


_present_as_public(globals(), __name__)
