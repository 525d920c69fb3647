"""Named profiles: one mechanism, one list of names, one rule for overrides, for every settings class.

Every settings dataclass of the package derives from :class:`Settings` and gets

* ``Cls.profile(name, **overrides)``: profile ``name`` of :data:`PROFILE_NAMES`
  (``paper``: the method's published settings, the class defaults unless the
  class says otherwise; ``fast``: the CPU profile measured in ``benchmarks/``)
  with ``overrides`` applied by one rule (:func:`apply_overrides`);
* ``to_dict()`` and ``replace(**changes)``.

A class lists its profiles in ``PROFILES``: profile name -> the fields it
changes from the class defaults (a subclass inherits them, so one ``fast``
profile can serve a family of configs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from .files import JSONRecord

#: The profile names every settings class answers to (and every ``--profile`` flag offers).
PROFILE_NAMES = ("paper", "fast")


def epoch_step_pairs(fields: set[str]) -> list[tuple[str, str]]:
    """``(X_epochs, X_steps)`` field pairs where a step count, when set, replaces the epochs (``epochs``/``steps``,
    ``recovery_epochs``/``recovery_steps``, ...)."""
    return [(name, name[:-len("epochs")] + "steps") for name in sorted(fields)
            if name.endswith("epochs") and name[:-len("epochs")] + "steps" in fields]


def apply_overrides(cls: type, base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The field values of ``cls`` from a profile's ``base`` and the caller's ``overrides``, by one rule.

    * ``None`` overrides are ignored (an unset command-line flag never replaces a value);
    * a name that is not a field of ``cls`` is a ``ValueError`` naming it;
    * an explicit epoch count drops the profile's step count of the same pair
      (``--fast --epochs 2`` trains 2 epochs, not the profile's steps); giving
      both of a pair is a ``ValueError``.
    """
    changes = {key: value for key, value in overrides.items() if value is not None}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    values = dict(base)
    for epochs, steps in epoch_step_pairs(fields):
        if epochs in changes and steps in changes:
            raise ValueError(f"give {steps} or {epochs}, not both")
        if epochs in changes:
            values.pop(steps, None)
    values.update(changes)
    return values


class Settings(JSONRecord):
    """Base of the package's settings dataclasses: named profiles, ``to_dict`` and ``replace``."""

    #: profile name -> the fields that profile changes from the class defaults (``paper``: none unless listed).
    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.PROFILES) - set(PROFILE_NAMES))
        if unknown:
            raise TypeError(f"{cls.__name__}.PROFILES names {unknown}; profiles are {', '.join(PROFILE_NAMES)}")

    @classmethod
    def profile(cls, name: str = "paper", **overrides):
        """Profile ``name`` (``paper`` or ``fast``) with ``overrides`` (see :func:`apply_overrides`)."""
        if name not in PROFILE_NAMES:
            raise ValueError(f"profile must be one of {', '.join(PROFILE_NAMES)}; got {name!r}")
        return cls(**apply_overrides(cls, cls.PROFILES.get(name, {}), overrides))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
