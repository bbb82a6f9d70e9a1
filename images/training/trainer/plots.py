"""Evaluation plots (matplotlib with the non-interactive Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix_figure(confusion: np.ndarray, class_names: list[str]) -> Figure:
    """Confusion matrix on the held-out set, counts written in each cell."""
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names)
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (held-out set)")
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            color = "white" if confusion[i, j] > threshold else "black"
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", color=color)
    fig.tight_layout()
    return fig


def feature_importance_figure(importances: np.ndarray, feature_names: list[str]) -> Figure:
    """Horizontal bar chart of the forest's impurity-based feature importances."""
    order = np.argsort(importances)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.barh([feature_names[i] for i in order], importances[order], color="#4c72b0")
    ax.set_xlabel("importance (mean decrease in impurity)")
    ax.set_title("Feature importance")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
