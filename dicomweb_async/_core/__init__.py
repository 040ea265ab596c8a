"""The sans-io protocol core: what DICOMweb messages look like, with no network I/O.

Media types and transfer syntaxes, URL and query building, the multipart/related reader and
writer, reading UIDs from an instance's first bytes, DICOM JSON helpers, STOW-RS response
parsing, the retry policy and the exception tree. Nothing here imports httpx, httpcore or
anyio (an import-linter contract checks it), so every piece is tested with plain
synchronous code fed bytes. The few functions that read a file (a transfer syntax, a
Dataset from a path) block, and the layers above call them in worker threads.
"""
