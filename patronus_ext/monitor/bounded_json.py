"""JSON from untrusted clients, parsed only within bounds the interpreter can always meet.

``json.loads`` recurses once per nesting level (a line of 100,000 ``[`` raises
``RecursionError``) and turns every integer literal into an ``int`` (one of more
than 4,300 digits raises ``ValueError`` under Python's int-string limit, and a
long one costs quadratic time below it).  :func:`bounds_problem` is a pre-check
of the raw text, run by C-speed regular expressions and string methods, that
refuses both before the parser sees them: nesting deeper than ``max_depth``
arrays and objects, and a number literal longer than ``max_number_chars``.
Strings are skipped (their content may hold any bracket or digit).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

#: Deepest nesting of arrays and objects accepted (far below the interpreter's recursion limit).
MAX_JSON_DEPTH = 64
#: Longest number literal accepted, in characters (sign, digits, fraction and exponent).
MAX_NUMBER_CHARS = 100

# A JSON string, escapes included (the unrolled form: no backtracking between alternatives).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


class JSONBoundsError(ValueError):
    """Text refused before parsing: nested too deep or a number too long (the message says which)."""


def bounds_problem(text: str, *, max_depth: int = MAX_JSON_DEPTH,
                   max_number_chars: int = MAX_NUMBER_CHARS) -> str | None:
    """Why ``text`` is refused before parsing (``None`` when it is within the bounds)."""
    bare = _STRING.sub("_", text)   # a placeholder that is neither a quote, a bracket nor part of a number
    unterminated = bare.find('"')
    if unterminated >= 0:   # an unterminated string: the parser stops there, so nothing after it counts
        bare = bare[:unterminated]
    # Outside strings, a run of these characters is one number token (or text the parser refuses anyway).
    too_long = re.search(r"[-+.0-9eE]{%d,}" % (max_number_chars + 1), bare)
    if too_long is not None:
        return f"a JSON number of {len(too_long.group())} characters (the limit is {max_number_chars})"
    if bare.count("[") + bare.count("{") > max_depth:   # fewer openings than the bound cannot nest deeper
        brackets = _NOT_BRACKET.sub("", bare)
        depth = max(itertools.accumulate(map(_NESTING.__getitem__, brackets)), default=0)
        if depth > max_depth:
            return f"JSON nested deeper than {max_depth} levels of arrays and objects"
    return None


def loads_bounded(text: str, *, max_depth: int = MAX_JSON_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS) -> Any:
    """``json.loads(text)`` for text within the bounds; :class:`JSONBoundsError` otherwise.  Other failures
    are ``json.JSONDecodeError`` (a ``ValueError``, as is :class:`JSONBoundsError`)."""
    problem = bounds_problem(text, max_depth=max_depth, max_number_chars=max_number_chars)
    if problem is not None:
        raise JSONBoundsError(problem)
    return json.loads(text)
