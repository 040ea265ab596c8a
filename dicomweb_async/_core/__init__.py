"""The sans-io protocol core: what DICOMweb messages look like, with no I/O of its own.

Media types and transfer syntaxes, URL and query building, the multipart/related reader and
writer, reading UIDs from an instance's first bytes, DICOM JSON helpers, STOW-RS response
parsing, the retry policy and the exception tree. Nothing here imports httpx, httpcore or
anyio (an import-linter contract checks it), so every piece is tested with plain
synchronous code fed bytes.
"""
