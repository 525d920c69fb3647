"""PNG figures for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import torch


def pca_2d(groups: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Project every group of ``[N, d]`` vectors onto the top two principal axes of all of them."""
    stacked = torch.cat([g.double() for g in groups.values()])
    centred = stacked - stacked.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    axes = v[:2].T
    out, start = {}, 0
    for name, g in groups.items():
        out[name] = (centred[start:start + g.shape[0]] @ axes).float()
        start += g.shape[0]
    return out


def plot_representations(groups: dict[str, torch.Tensor], path: str | Path, title: str) -> Path:
    """Scatter of clean vs triggered representations after PCA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        raise ValueError("nothing to plot")
    points = pca_2d(groups)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for name, xy in points.items():
        ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.7, label=name if name == "clean" else f"+ '{name}'")
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
