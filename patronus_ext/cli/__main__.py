"""``python -m patronus_ext.cli``: the ``patronus`` command."""

from .main import main

raise SystemExit(main())
