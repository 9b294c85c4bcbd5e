"""The classifier head: learned layer weights → pooled features → small MLP → K logits.

Example:
    >>> import torch
    >>> head = EmotionHead(HeadConfig(n_layers=3, dim=8, n_classes=4, hidden=16))
    >>> head(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from speech_emotion.errors import BundleError


@dataclass(frozen=True)
class HeadConfig:
    """Shape and regularisation of an :class:`EmotionHead`; round-trips through JSON.

    Attributes:
        n_layers: encoder layers the features come from.
        dim: feature width per layer.
        n_classes: K, the number of schema classes.
        hidden: width of the hidden layer; 0 makes the head linear after layer weighting.
        dropout: dropout on the weighted features and the hidden layer.
    """

    n_layers: int
    dim: int
    n_classes: int
    hidden: int = 256
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict) -> "HeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise BundleError(f"head config has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**spec)


class EmotionHead(nn.Module):
    """Standardise each layer's features, mix layers with softmax weights, classify.

    The per-feature mean and scale are fitted on training features (:meth:`fit_scaler`)
    and saved with the weights, so a bundle predicts without its training data.
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.layer_logits = nn.Parameter(torch.zeros(config.n_layers))
        self.register_buffer("feature_mean", torch.zeros(config.n_layers, config.dim))
        self.register_buffer("feature_scale", torch.ones(config.n_layers, config.dim))
        self.dropout = nn.Dropout(config.dropout)
        if config.hidden:
            self.classifier = nn.Sequential(
                nn.Linear(config.dim, config.hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, config.n_classes)
            )
        else:
            self.classifier = nn.Linear(config.dim, config.n_classes)

    @property
    def n_outputs(self) -> int:
        last = self.classifier[-1] if isinstance(self.classifier, nn.Sequential) else self.classifier
        return last.out_features

    def fit_scaler(self, features: torch.Tensor) -> None:
        """Set the standardisation from training features of shape (n, n_layers, dim)."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_scale.copy_(features.std(dim=0).clamp_min(1e-5))

    def layer_weights(self) -> torch.Tensor:
        """Softmax weight of each encoder layer (sums to 1)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of shape (n, n_classes) from features of shape (n, n_layers, dim)."""
        if features.shape[1:] != self.feature_mean.shape:
            raise ValueError(
                f"expected features of shape (n, {self.config.n_layers}, {self.config.dim}), got {tuple(features.shape)}; "
                "was the model trained with another encoder?"
            )
        standard = (features - self.feature_mean) / self.feature_scale
        mixed = torch.einsum("nld,l->nd", standard, self.layer_weights())
        return self.classifier(self.dropout(mixed))
