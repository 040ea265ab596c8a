"""dicomweb-async: a streaming asyncio client for DICOMweb servers.

The public API is everything named in ``__all__``; modules whose names start with an
underscore are private and may change without notice.
"""

import logging as _logging

from ._auth import BearerAuth, TokenProvider
from ._azure_admin import Partition
from ._azure_auth import AzureADAuth, azure_scope
from ._bulk_download import DownloadOutcome, DownloadPipeline, DownloadReport
from ._bulk_upload import FileOutcome, UploadPipeline, UploadReport
from ._changefeed import ChangeFeed, ChangeFeedCursor, ChangeFeedEntry
from ._client import AsyncDICOMwebClient, AuthLike
from ._download import DownloadedInstance
from ._exceptions import (
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
from ._extended_query_tags import ExtendedQueryTag, ExtendedQueryTagError, ExtendedQueryTagSpec
from ._journal import Journal, JournalEntry
from ._media import MediaType, parse_media_type
from ._multipart import (
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    SinglePartReader,
)
from ._multipart_writer import BodyPart, MultipartWriter
from ._operations import Operation, OperationReference, OperationState
from ._parts import Part, PartStream
from ._progress import Progress, ProgressCallback
from ._retry import RetryPolicy
from ._store_result import FailureReason, StoreOutcome, StoreResult
from ._wado import Frame, Metadata, ReaderLimits

__version__ = "0.1.0.dev0"

# A library leaves logging output to the application; without this, Python would print
# retry warnings on stderr by itself.
_logging.getLogger("dicomweb_async").addHandler(_logging.NullHandler())

__all__ = [
    "AsyncDICOMwebClient",
    "AuthLike",
    "AuthenticationError",
    "AzureADAuth",
    "BearerAuth",
    "BodyPart",
    "BulkTransferError",
    "ChangeFeed",
    "ChangeFeedCursor",
    "ChangeFeedEntry",
    "ConflictError",
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
    "SinglePartReader",
    "StoreFailedError",
    "StoreOutcome",
    "StoreResult",
    "TimeoutError",
    "TokenProvider",
    "TransportError",
    "UploadPipeline",
    "UploadReport",
    "azure_scope",
    "parse_media_type",
    "__version__",
]
