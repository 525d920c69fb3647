"""LMSanitator (docs/METHODS.md §3): attack-vector inversion with a soft trigger, and its settings."""
