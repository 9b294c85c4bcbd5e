"""Differentiable pooling of hidden states for fine-tuning (torch)."""

from __future__ import annotations

import torch


def pool_frames(frames: torch.Tensor) -> torch.Tensor:
    """Differentiable :func:`~speech_emotion.features.signal.pool_mean_std`: mean then std (ddof 0) over frames.

    The std's gradient is 0 (not NaN) where all frames are equal.

    Args:
        frames: tensor ``(n_layers, n_frames, hidden)``.

    Returns:
        tensor ``(n_layers, 2 * hidden)``: per layer the mean followed by the std.

    Example:
        >>> pool_frames(torch.tensor([[[1.0, 2.0], [3.0, 2.0]]])).tolist()
        [[2.0, 2.0, 1.0, 0.0]]
    """
    mean = frames.mean(dim=1)
    var = (frames - mean[:, None, :]).pow(2).mean(dim=1)
    positive = var > 0
    std = torch.sqrt(torch.where(positive, var, torch.ones_like(var))) * positive
    return torch.cat([mean, std], dim=1)
