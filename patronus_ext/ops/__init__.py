"""The three kernel ops: typed Python face, input checks and backend choice.

``backend="auto"`` uses the compiled kernel when one exists for the input's
device and dtype and the pure-PyTorch reference otherwise; ``"ext"`` insists on
the compiled kernel (``RuntimeError`` if there is none); ``"reference"`` always
uses :mod:`patronus_ext.ops.reference`.  Every backend computes the same function.

Semantics (docs/METHODS.md §6):

``token_topk(queries [N, T*d], table [V, d], k, rows=None [W, T], negate=True)``
    ``score[n, w] = ±Σ_t <queries[n, t*d:(t+1)*d], table[rows[w, t]]>``; with
    ``rows=None`` every table row is a candidate (``T = 1``); a ``-1`` in ``rows``
    is padding and contributes 0.  Returns ``values [N, k]`` (descending) and
    ``indices [N, k]`` into the candidates.  The ``[N, W]`` score matrix is never
    materialised.  NaN scores are never selected (every real score, ``-inf``
    included, outranks them): a slot with no real score left gets value ``-inf``
    and index ``-1``.  Ties between equal
    scores may come in any order.  ``precision`` selects the CUDA path
    (``"exact"`` fp32, ``"tf32"`` or ``"bf16"`` tensor cores); CPU kernels are
    always exact.

``supcon_loss(features [C, N, d] or [N, d], labels [C, N] or [N], temperature)``
    The SupCon loss of each of ``C`` independent problems (``[C]``, or a scalar
    for 2-D features), differentiable w.r.t. ``features``.  A problem with no
    positive pair has loss 0; a problem with a NaN feature has loss NaN.

``bank_similarity(x [M, d], bank [K, d], mode="cosine"|"sign")``
    ``best[m] = max_k sim(x[m], bank[k])`` and its ``index``: cosine similarity,
    or the fraction of dimensions whose signs agree.  Ties go to the lowest
    index; a row whose similarities are all NaN gets ``best = NaN``, ``index = -1``.

Outputs are float32 (float64 for float64 inputs); accumulation is in float32 at least.
"""

from __future__ import annotations

import math

import torch

from . import _extension, reference

BACKENDS = ("auto", "ext", "reference")
PRECISIONS = ("exact", "tf32", "bf16")
BANK_MODES = ("cosine", "sign")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Load the compiled module (or settle on the fallback, with its one warning) at
# import rather than on the first call: torch.compile cannot trace an import.
_extension.state()


def _require_tensor(name: str, value, ndims: tuple[int, ...], floating: bool) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(value.shape)}")
    if floating and value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), "
                         f"got {value.dtype}")
    if not floating and (value.dtype.is_floating_point or value.dtype.is_complex
                         or value.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor, got {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    return value


def _same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device: {listed}")


def _same_dtype(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")


def _choose(backend: str, op: str, like: torch.Tensor) -> bool:
    """True to run the compiled kernel, False for the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    ext = _extension.state()
    available = ext.has_kernel(op, like.device.type, like.dtype)
    if backend == "ext" and not available:
        why = ext.reason or (f"no compiled {like.device.type} kernel for dtype {like.dtype} "
                             f"(compiled: {ext.kernel_dtypes(op, like.device.type) or 'none'})")
        raise RuntimeError(f"{op}: backend='ext' requested but {why}")
    return available


def token_topk(queries: torch.Tensor, table: torch.Tensor, k: int, rows: torch.Tensor | None = None,
               negate: bool = True, *, precision: str = "exact", backend: str = "auto"):
    """Fused score + top-k over a vocabulary (or word list); see the module doc."""
    _require_tensor("queries", queries, (2,), floating=True)
    _require_tensor("table", table, (2,), floating=True)
    _same_dtype("queries", queries, "table", table)
    _same_device(queries=queries, table=table, rows=rows)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    vocab, dim = table.shape
    if rows is None:
        width, tokens = vocab, 1
    else:
        _require_tensor("rows", rows, (2,), floating=False)
        width, tokens = rows.shape
        lo, hi = int(rows.min()), int(rows.max())
        if lo < -1 or hi >= vocab:
            raise ValueError(f"rows entries must lie in [-1, {vocab - 1}] (-1 = padding), "
                             f"got range [{lo}, {hi}]")
        rows = rows.to(torch.long).contiguous()
    if queries.shape[1] != tokens * dim:
        raise ValueError(f"queries must have T*d = {tokens}*{dim} = {tokens * dim} columns, "
                         f"got {queries.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= width:
        raise ValueError(f"k must lie in [1, {width}] (the number of candidates), got {k}")
    if _choose(backend, "token_topk", queries):
        return torch.ops.patronus.token_topk(queries.contiguous(), table.contiguous(), k, rows,
                                             bool(negate), precision)
    return reference.token_topk(queries, table, k, rows, bool(negate))


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.5,
                scale_by_temperature: bool = True, *, backend: str = "auto") -> torch.Tensor:
    """Batched SupCon loss; see the module doc."""
    _require_tensor("features", features, (2, 3), floating=True)
    _require_tensor("labels", labels, (1, 2), floating=False)
    _same_device(features=features, labels=labels)
    temperature = _check_temperature(temperature)
    single = features.dim() == 2
    feats = features.unsqueeze(0) if single else features
    c, n, _ = feats.shape
    if labels.dim() == 1:
        if labels.shape[0] != n:
            raise ValueError(f"labels [N] must have N = {n} entries, got {labels.shape[0]}")
        labels = labels.unsqueeze(0).expand(c, n)
    elif tuple(labels.shape) != (c, n):
        raise ValueError(f"labels must be [N] or [C, N] = [{c}, {n}], got {tuple(labels.shape)}")
    labels = labels.to(torch.long).contiguous()
    if _choose(backend, "supcon_loss", feats):
        loss, _ = torch.ops.patronus.supcon_loss_fwd(feats.contiguous(), labels, temperature,
                                                     bool(scale_by_temperature))
    else:
        loss = reference.supcon_loss(feats, labels, temperature, bool(scale_by_temperature))
    return loss[0] if single else loss


def bank_similarity(x: torch.Tensor, bank: torch.Tensor, mode: str = "cosine", *,
                    backend: str = "auto"):
    """Best similarity of each row of ``x`` to a bank of vectors; see the module doc."""
    _require_tensor("x", x, (2,), floating=True)
    _require_tensor("bank", bank, (2,), floating=True)
    _same_dtype("x", x, "bank", bank)
    _same_device(x=x, bank=bank)
    if mode not in BANK_MODES:
        raise ValueError(f"mode must be one of {BANK_MODES}, got {mode!r}")
    if x.shape[1] != bank.shape[1]:
        raise ValueError(f"x and bank must have the same width d, got {x.shape[1]} and {bank.shape[1]}")
    if _choose(backend, "bank_similarity", x):
        return torch.ops.patronus.bank_similarity(x.contiguous(), bank.contiguous(), mode)
    return reference.bank_similarity(x, bank, mode)
