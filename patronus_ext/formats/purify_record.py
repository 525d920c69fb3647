"""The record a purified model folder carries: ``purify.json``."""

from __future__ import annotations

PURIFY_FILE = "purify.json"
PURIFY_FORMAT = "patronus_ext.purify/1"
