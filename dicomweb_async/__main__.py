"""``python -m dicomweb_async``: the ``dicomweb-async`` command."""

from ._cli import main

raise SystemExit(main())
