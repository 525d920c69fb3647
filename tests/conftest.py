"""Shared fixtures: op backends (the compiled one only where it loaded), seeded generators."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from patronus_ext.ops import _extension

# Hypothesis: no deadline (first calls pay for lazy loading); reproducible examples on CI.
# The backend fixture is function-scoped but stateless, so sharing it across examples is fine.
settings.register_profile("default", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def require_test_extra(module: str):
    """Import ``module``, one of the packages the test extra installs: a test that needs it fails (not skips)
    where it is missing, so a package the extra forgot can never turn into a silent skip."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is part of the test extra but is not installed ({exc}): "
                    "pip install --no-build-isolation -e '.[test]'", pytrace=False)


def one_error_line(capsys, verb: str = "scan") -> str:
    """The CLI's error contract: nothing on stdout (no verdict), exactly one line on stderr, no traceback."""
    captured = capsys.readouterr()
    assert captured.out == "", f"something was printed before the error: {captured.out!r}"
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"patronus {verb}: error: ") and "Traceback" not in captured.err
    return lines[0]


def extension_loaded() -> bool:
    return _extension.state().loaded


requires_ext = pytest.mark.skipif(not extension_loaded(),
                                  reason="compiled module not loaded (missing, stale or disabled)")


@pytest.fixture(params=["ext", "reference"])
def backend(request) -> str:
    """Each op test runs on the compiled kernels and on the pure-PyTorch reference."""
    if request.param == "ext" and not extension_loaded():
        pytest.skip(f"compiled module not loaded: {_extension.state().reason}")
    return request.param


@pytest.fixture
def generator(request) -> torch.Generator:
    """A CPU generator seeded from the test id, so every test gets fresh but reproducible inputs."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**31)
    return torch.Generator().manual_seed(seed)
