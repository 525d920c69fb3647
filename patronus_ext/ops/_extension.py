"""Loading the compiled module ``patronus_ext._C`` and registering its ops' Python parts.

Import never fails because of the compiled module: when it is missing, stale
(built for another ABI or torch) or disabled with ``PATRONUS_DISABLE_EXT=1``,
a single warning is issued and every op falls back to :mod:`patronus_ext.ops.reference`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import warnings

import torch

#: Bumped whenever an op schema or the build-info contract changes; a ``_C``
#: built for another value is stale and is not used.
EXPECTED_ABI = 1

OP_NAMES = ("token_topk", "supcon_loss", "bank_similarity")


@dataclasses.dataclass(frozen=True)
class ExtensionState:
    """What the compiled module offers in this process."""

    loaded: bool
    reason: str  # why it is not loaded, or "" when it is
    build_info: dict

    def kernel_dtypes(self, op: str, device_type: str) -> tuple[str, ...]:
        """Dtype names with a compiled kernel for ``op`` on ``device_type``."""
        if not self.loaded:
            return ()
        table = self.build_info.get("kernels", {}).get(device_type, {})
        return tuple(table.get(op, ()))

    def has_kernel(self, op: str, device_type: str, dtype: torch.dtype) -> bool:
        return str(dtype).replace("torch.", "") in self.kernel_dtypes(op, device_type)


def _torch_version_core(version: str) -> str:
    return version.split("+")[0]


def _load() -> ExtensionState:
    if os.environ.get("PATRONUS_DISABLE_EXT", "0") not in ("", "0"):
        return ExtensionState(False, "disabled by PATRONUS_DISABLE_EXT", {})
    try:
        module = importlib.import_module("patronus_ext._C")
    except ImportError as exc:  # missing, or built against another torch (undefined symbol)
        return ExtensionState(False, f"compiled module not importable: {exc}", {})
    info = dict(module.build_info())
    if info.get("abi") != EXPECTED_ABI:
        return ExtensionState(
            False, f"stale compiled module: ABI {info.get('abi')} != expected {EXPECTED_ABI}; "
            "rebuild with `pip install --no-build-isolation -e .`", info)
    built_for = _torch_version_core(str(info.get("torch_version", "")))
    if built_for != _torch_version_core(torch.__version__):
        return ExtensionState(
            False, f"stale compiled module: built for torch {built_for}, running "
            f"{torch.__version__}; rebuild with `pip install --no-build-isolation -e .`", info)
    _register_python_parts()
    return ExtensionState(True, "", info)


_REGISTERED = False


def _register_python_parts() -> None:
    """Fake (meta) kernels and autograd for the C++ ops, so they trace and differentiate.

    Once per process: torch.library refuses a second registration.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True

    # The fakes also run for meta tensors (and for calls mixing meta with a real
    # device), so they check what they can without data, as the kernels do.
    def _check_same(what, a, a_name, b, b_name):
        torch._check(getattr(a, what) == getattr(b, what),
                     lambda: f"{a_name} and {b_name} must have the same {what}, got "
                             f"{getattr(a, what)} and {getattr(b, what)}")

    @torch.library.register_fake("patronus::token_topk")
    def _token_topk_fake(queries, table, k, rows=None, negate=True, precision="exact"):
        _check_same("device", queries, "queries", table, "table")
        _check_same("dtype", queries, "queries", table, "table")
        if rows is not None:
            _check_same("device", queries, "queries", rows, "rows")
        out_dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
        n = queries.shape[0]
        return (queries.new_empty((n, k), dtype=out_dtype),
                queries.new_empty((n, k), dtype=torch.long))

    @torch.library.register_fake("patronus::supcon_loss_fwd")
    def _supcon_fwd_fake(features, labels, temperature, scale_by_temperature=True):
        _check_same("device", features, "features", labels, "labels")
        out_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        c, n = features.shape[0], features.shape[1]
        return features.new_empty((c,), dtype=out_dtype), features.new_empty((c, n), dtype=out_dtype)

    @torch.library.register_fake("patronus::supcon_loss_bwd")
    def _supcon_bwd_fake(grad_loss, features, labels, lse, temperature, scale_by_temperature=True):
        for name, tensor in (("grad_loss", grad_loss), ("labels", labels), ("lse", lse)):
            _check_same("device", features, "features", tensor, name)
        return torch.empty_like(features)

    @torch.library.register_fake("patronus::bank_similarity")
    def _bank_fake(x, bank, mode="cosine"):
        _check_same("device", x, "x", bank, "bank")
        _check_same("dtype", x, "x", bank, "bank")
        out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        m = x.shape[0]
        return x.new_empty((m,), dtype=out_dtype), x.new_empty((m,), dtype=torch.long)

    def _setup(ctx, inputs, output):
        features, labels, temperature, scale = inputs
        _, lse = output
        ctx.save_for_backward(features, labels, lse)
        ctx.temperature = temperature
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)

    def _backward(ctx, grad_loss, _grad_lse):
        features, labels, lse = ctx.saved_tensors
        grad = torch.ops.patronus.supcon_loss_bwd(
            grad_loss.contiguous(), features, labels, lse, ctx.temperature, ctx.scale)
        return grad, None, None, None

    torch.library.register_autograd("patronus::supcon_loss_fwd", _backward, setup_context=_setup)


_STATE: ExtensionState | None = None
_WARNED = False


def state() -> ExtensionState:
    """The extension state, loaded on first use; warns once when falling back."""
    global _STATE, _WARNED
    if _STATE is None:
        _STATE = _load()
    if not _STATE.loaded and not _WARNED and "PATRONUS_DISABLE_EXT" not in _STATE.reason:
        _WARNED = True
        warnings.warn(f"patronus_ext: {_STATE.reason}; using the pure-PyTorch reference ops",
                      RuntimeWarning, stacklevel=3)
    return _STATE


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run in this process, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    ext = state()
    if not ext.loaded:
        return f"compiled module not loaded: {ext.reason}"
    if not ext.kernel_dtypes("token_topk", "cuda"):
        return "the compiled module has no CUDA kernels (CPU-only build)"
    return None
