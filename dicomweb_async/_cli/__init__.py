"""The ``dicomweb-async`` command line. It uses only the package's public names."""

from .main import main

__all__ = ["main"]
