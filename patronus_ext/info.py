"""``python -m patronus_ext.info``: versions, build flags and which kernels serve each op."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from . import __version__
from .ops import _extension

DEVICE_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def collect() -> dict:
    """The build and runtime facts as a JSON-serialisable dict."""
    ext = _extension.state()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    auto = {}
    for op in _extension.OP_NAMES:
        auto[op] = {
            device: {str(dt).replace("torch.", ""): ("ext" if ext.has_kernel(op, device, dt) else "reference")
                     for dt in DEVICE_DTYPES}
            for device in devices
        }
    return {
        "patronus_ext": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "extension_loaded": ext.loaded,
        "extension_problem": ext.reason or None,
        "build": ext.build_info,
        "auto_backend": auto,
    }


def render(info: dict) -> str:
    lines = [
        f"patronus_ext {info['patronus_ext']}  python {info['python']}  torch {info['torch']}"
        f"  (CUDA {info['torch_cuda'] or 'none'}, GPU: {info['gpu'] or 'none'})",
        f"compiled module: {'loaded' if info['extension_loaded'] else 'NOT loaded'}"
        + (f" ({info['extension_problem']})" if info["extension_problem"] else ""),
    ]
    build = info["build"]
    if build:
        lines.append(f"  built for torch {build.get('torch_version')}, ABI {build.get('abi')}, "
                     f"CUDA kernels: {'yes' if build.get('cuda') else 'no'}"
                     + (f" (arch {build.get('cuda_arch_list')})" if build.get("cuda") else ""))
        lines.append(f"  C++ flags: {build.get('cxx_flags')}")
        for device, ops in build.get("kernels", {}).items():
            for op, dtypes in ops.items():
                lines.append(f"  {device:5s} {op:16s} {', '.join(dtypes)}")
    lines.append("backend='auto' picks:")
    for op, per_device in info["auto_backend"].items():
        for device, choice in per_device.items():
            picks = ", ".join(f"{dt}->{be}" for dt, be in choice.items())
            lines.append(f"  {device:5s} {op:16s} {picks}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patronus_ext.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
