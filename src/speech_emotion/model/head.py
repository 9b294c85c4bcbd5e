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

MIXINGS = ("softmax", "concat")


@dataclass(frozen=True)
class HeadConfig:
    """Shape and regularisation of an :class:`EmotionHead`; round-trips through JSON.

    Attributes:
        n_layers: encoder layers the features come from.
        dim: feature width per layer.
        n_classes: K, the number of schema classes.
        hidden: width of the hidden layer; 0 makes the head linear after layer weighting.
        dropout: dropout on the weighted features and the hidden layer.
        hf_compatible: the form a stock transformers ``*ForSequenceClassification`` /
            ``*ForAudioClassification`` head computes exactly (weighted layer sum, projector,
            mean pooling, classifier), so ``ser export --format hf`` can copy it: only the
            per-layer MEAN half of the pooled statistics is used (no std), standardised with
            one per-dimension scale shared by all layers times one factor per layer.
            Needs ``hidden=0``.
        mixing: ``"softmax"`` mixes layers with learned softmax weights (a weighted sum);
            ``"concat"`` feeds every standardised layer to the classifier side by side.
    """

    n_layers: int
    dim: int
    n_classes: int
    hidden: int = 256
    dropout: float = 0.2
    hf_compatible: bool = False
    mixing: str = "softmax"

    def __post_init__(self) -> None:
        if self.mixing not in MIXINGS:
            raise BundleError(f"head mixing {self.mixing!r} is not one of {', '.join(MIXINGS)}")
        if self.hf_compatible and self.mixing != "softmax":
            raise ValueError(
                "hf_compatible=True needs mixing='softmax': a stock transformers head sums layers with weights"
            )
        if self.hf_compatible and self.hidden:
            raise ValueError(
                f"hf_compatible=True needs a linear head (hidden=0), got hidden={self.hidden}; a stock transformers "
                "head has no hidden layer"
            )
        if self.hf_compatible and self.dim % 2:
            raise ValueError(f"hf_compatible=True needs mean+std features (even dim), got dim={self.dim}")

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
        n_inputs = config.dim // 2 if config.hf_compatible else config.dim  # hf_compatible: mean half only
        if config.mixing == "concat":
            n_inputs *= config.n_layers
        if config.hidden:
            self.classifier = nn.Sequential(
                nn.Linear(n_inputs, config.hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden, config.n_classes),
            )
        else:
            self.classifier = nn.Linear(n_inputs, config.n_classes)

    @property
    def n_outputs(self) -> int:
        last = self.classifier[-1] if isinstance(self.classifier, nn.Sequential) else self.classifier
        return last.out_features

    def fit_scaler(self, features: torch.Tensor) -> None:
        """Set the standardisation from training features of shape (n, n_layers, dim).

        Per layer and dimension; with ``hf_compatible`` the scale is ``layer_factor[l] * shared[d]``
        (RMS of layer ``l``, then the std of each dimension over all layers), which a shared
        projector after the weighted layer sum can represent.
        """
        self.feature_mean.copy_(features.mean(dim=0))
        if not self.config.hf_compatible:
            self.feature_scale.copy_(features.std(dim=0).clamp_min(1e-5))
            return
        centred = features - self.feature_mean
        layer_factor = centred.pow(2).mean(dim=(0, 2)).sqrt().clamp_min(1e-5)
        shared = (centred / layer_factor[None, :, None]).pow(2).mean(dim=(0, 1)).sqrt().clamp_min(1e-5)
        self.feature_scale.copy_(layer_factor[:, None] * shared[None, :])

    def layer_weights(self) -> torch.Tensor:
        """Softmax weight of each encoder layer (sums to 1)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of shape (n, n_classes) from features of shape (n, n_layers, dim)."""
        if features.shape[1:] != self.feature_mean.shape:
            raise ValueError(
                f"expected features of shape (n, {self.config.n_layers}, {self.config.dim}), got "
                f"{tuple(features.shape)}; "
                "was the model trained with another encoder?"
            )
        standard = (features - self.feature_mean) / self.feature_scale
        if self.config.hf_compatible:
            standard = standard[..., : self.config.dim // 2]
        if self.config.mixing == "concat":
            mixed = standard.flatten(start_dim=1)
        else:
            mixed = torch.einsum("nld,l->nd", standard, self.layer_weights())
        return self.classifier(self.dropout(mixed))
