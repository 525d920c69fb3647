"""Sub-commands of the ``patronus`` CLI: argument parsing and output only, no algorithms."""
