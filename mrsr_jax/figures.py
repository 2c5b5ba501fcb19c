"""The paper's figures for a run: Fig. 2-style comparison panels and Fig. 7-style loss curves."""

from __future__ import annotations

import collections
import json
import os

import matplotlib

# Files only, no display on servers; but keep a backend the user chose (a notebook's inline one, which
# ipykernel and Colab announce in MPLBACKEND), or importing this module would stop plots showing there.
if not os.environ.get("MPLBACKEND"):
  matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def comparison_panel(images: dict[str, np.ndarray], rows: list[str], path: str, title: str = "") -> None:
  """HR and each method's result on top, |result − HR| below, all differences on one colour scale."""
  hr = images["hr"]
  diffs = {n: np.abs(images[n] - hr) for n in rows}
  vmax_diff = max(float(d.max()) for d in diffs.values()) or 1.0
  cols = 1 + len(rows)
  fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.6), squeeze=False, layout="constrained")
  axes[0, 0].imshow(hr, cmap="gray", vmin=0, vmax=1)
  axes[0, 0].set_title("HR")
  axes[1, 0].axis("off")
  for j, n in enumerate(rows, start=1):
    axes[0, j].imshow(np.clip(images[n], 0, 1), cmap="gray", vmin=0, vmax=1)
    mse = float(np.mean(diffs[n] ** 2))
    psnr = 10 * np.log10(max(float(hr.max()), 1e-12) ** 2 / mse) if mse > 0 else float("inf")
    axes[0, j].set_title(f"{n}\n{psnr:.2f} dB", fontsize=9)
    im = axes[1, j].imshow(diffs[n], cmap="inferno", vmin=0, vmax=vmax_diff)
    axes[1, j].set_title(f"|{n} − HR|", fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(im, ax=axes[1, 1:].tolist(), shrink=0.8, label="absolute error")
  if title:
    fig.suptitle(title)
  _save(fig, path)


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metrics.jsonl -> {name: (steps, values)}; a resumed run's repeated steps keep the last value."""
  series: dict[str, dict[int, float]] = collections.defaultdict(dict)
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill; the rest of the file is still good
      step = rec.pop("step")
      for k, v in rec.items():
        series[k][step] = v
  return {k: (np.asarray(sorted(d)), np.asarray([d[s] for s in sorted(d)])) for k, d in series.items()}


def loss_curves(metrics_path: str, path: str, title: str = "") -> None:
  series = {k: v for k, v in read_metrics(metrics_path).items() if "steps_per_sec" not in k
            and "uptime" not in k}
  if not series:
    return
  n = len(series)
  cols = min(n, 4)
  rows = (n + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, layout="constrained")
  for ax, (name, (steps, values)) in zip(axes.ravel(), sorted(series.items())):
    ax.plot(steps, values)
    ax.set_title(name.split("/", 1)[-1], fontsize=9)
    ax.set_xlabel("step", fontsize=8)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  if title:
    fig.suptitle(f"training curves: {title}")
  _save(fig, path)


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
