"""Loading the compiled module: fallback when disabled, missing or stale; the info command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from patronus_ext import ops
from patronus_ext.ops import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(args, env_extra=None, timeout=180):
    env = dict(os.environ)
    env.pop("PATRONUS_DISABLE_EXT", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout, check=False)


@pytest.fixture
def fresh_state(monkeypatch):
    """Forget the loaded state (restored afterwards), so the next state() call loads again."""
    monkeypatch.delenv("PATRONUS_DISABLE_EXT", raising=False)
    monkeypatch.setattr(_extension, "_STATE", None)
    monkeypatch.setattr(_extension, "_WARNED", False)


def compiled_module():
    try:
        from patronus_ext import _C
    except ImportError as exc:
        pytest.skip(f"compiled module not built: {exc}")
    return _C


def assert_falls_back_with_one_warning(reason_part):
    queries, table = torch.randn(3, 4), torch.randn(20, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _extension.state()
        again = _extension.state()
        values, indices = ops.token_topk(queries, table, 5)              # auto -> reference
        ops.supcon_loss(torch.randn(2, 4, 3), torch.tensor([0, 0, 1, 1]))
    assert not first.loaded and first is again
    assert reason_part in first.reason
    ours = [w for w in caught if "patronus_ext" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert issubclass(ours[0].category, RuntimeWarning) and reason_part in str(ours[0].message)
    expected_v, expected_i = ops.token_topk(queries, table, 5, backend="reference")
    torch.testing.assert_close(values, expected_v)
    assert torch.equal(indices, expected_i)
    with pytest.raises(RuntimeError, match="backend='ext' requested but .*" + reason_part):
        ops.token_topk(queries, table, 5, backend="ext")


def test_stale_abi_falls_back_with_one_warning(fresh_state, monkeypatch):
    module = compiled_module()
    real = dict(module.build_info())
    monkeypatch.setattr(module, "build_info", lambda: {**real, "abi": _extension.EXPECTED_ABI + 1})
    assert_falls_back_with_one_warning("stale compiled module: ABI")


def test_module_built_for_another_torch_falls_back(fresh_state, monkeypatch):
    module = compiled_module()
    real = dict(module.build_info())
    monkeypatch.setattr(module, "build_info", lambda: {**real, "torch_version": "1.13.1"})
    assert_falls_back_with_one_warning("built for torch 1.13.1")


def test_unimportable_module_falls_back(fresh_state, monkeypatch):
    real_import = _extension.importlib.import_module

    def failing_import(name, *args):
        if name == "patronus_ext._C":
            raise ImportError("undefined symbol: _ZN3c104impl8GPUTrace")
        return real_import(name, *args)

    monkeypatch.setattr(_extension.importlib, "import_module", failing_import)
    assert_falls_back_with_one_warning("not importable")


def test_disabled_extension_in_a_fresh_process():
    script = textwrap.dedent("""
        import json, warnings
        warnings.simplefilter("error", RuntimeWarning)   # disabling on purpose must not warn
        import torch
        from patronus_ext import ops, info
        q, t = torch.randn(4, 8), torch.randn(50, 8)
        values, indices = ops.token_topk(q, t, 3)
        loss = ops.supcon_loss(torch.randn(2, 6, 4, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2]))
        loss.sum().backward()
        best, index = ops.bank_similarity(q, t[:5], "sign")
        try:
            ops.token_topk(q, t, 3, backend="ext")
            ext_error = None
        except RuntimeError as exc:
            ext_error = str(exc)
        print(json.dumps({"info": info.collect(), "ext_error": ext_error,
                          "shapes": [list(values.shape), list(indices.shape), list(loss.shape), list(best.shape)]}))
    """)
    done = run_python(["-c", script], {"PATRONUS_DISABLE_EXT": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["shapes"] == [[4, 3], [4, 3], [2], [4]]
    assert result["info"]["extension_loaded"] is False
    assert "PATRONUS_DISABLE_EXT" in result["info"]["extension_problem"]
    picks = {choice for per_device in result["info"]["auto_backend"].values()
             for per_dtype in per_device.values() for choice in per_dtype.values()}
    assert picks == {"reference"}
    assert "disabled by PATRONUS_DISABLE_EXT" in result["ext_error"]


def test_info_command_text_and_json():
    text = run_python(["-m", "patronus_ext.info"])
    assert text.returncode == 0, text.stderr
    assert "compiled module:" in text.stdout and "backend='auto' picks:" in text.stdout
    as_json = run_python(["-m", "patronus_ext.info", "--json"])
    assert as_json.returncode == 0, as_json.stderr
    info = json.loads(as_json.stdout)
    assert info["torch"] == torch.__version__
    if not info["extension_loaded"]:
        assert info["extension_problem"] and "NOT loaded" in text.stdout
    else:
        assert "compiled module: loaded" in text.stdout
        assert info["build"]["abi"] == _extension.EXPECTED_ABI
        for op in _extension.OP_NAMES:
            assert set(info["build"]["kernels"]["cpu"][op]) == {"float32", "float64", "bfloat16"}
            assert info["auto_backend"][op]["cpu"]["float32"] == "ext"
    disabled = run_python(["-m", "patronus_ext.info"], {"PATRONUS_DISABLE_EXT": "1"})
    assert "compiled module: NOT loaded (disabled by PATRONUS_DISABLE_EXT)" in disabled.stdout
