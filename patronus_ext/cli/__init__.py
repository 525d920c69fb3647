"""The faces of the package: the ``patronus`` command line (:func:`main`), its sub-commands
(``cli/commands/``), text and JSON formatting, plots and the built-in demo."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
