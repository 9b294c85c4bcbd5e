"""The classifier head: learned layer weights → pooled features → small MLP → K logits.

Example:
    >>> import torch
    >>> head = EmotionHead(HeadConfig(n_layers=3, dim=8, n_classes=4, hidden=16))
    >>> head(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from speech_emotion.model.metadata import HeadConfig


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

    def fold_domain(
        self, mean: np.ndarray, scale: np.ndarray, *, current: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        """Make the head standardise inputs of a new domain as it standardised those it was fitted for.

        A domain (a corpus, a recording setup) is described by the mean and scale of its pooled
        features over unlabelled clips. The head standardises by ``feature_mean``/``feature_scale``;
        seen from the domain's own standardised space those are ``(m - current_mean) / current_scale``
        and ``s / current_scale``. This rewrites them for the domain ``(mean, scale)``, so that a clip
        of the new domain reaches the classifier as a clip of the old one did.

        Args:
            mean, scale: the new domain's statistics, ``(n_layers, dim)``.
            current: the statistics of the domain the scaler was made for; None when the head was
                fitted on features of no particular domain (its scaler is then that of the training data).
        """
        fm, fs = self.feature_mean.detach().cpu().double().numpy(), self.feature_scale.detach().cpu().double().numpy()
        current_mean, current_scale = (fm, fs) if current is None else (np.asarray(c, np.float64) for c in current)
        z_mean, z_scale = (fm - current_mean) / current_scale, fs / current_scale
        mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        with torch.no_grad():
            self.feature_mean.copy_(torch.from_numpy(mean + scale * z_mean))
            self.feature_scale.copy_(torch.from_numpy(scale * z_scale))

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


def predict_logits(head: EmotionHead, features: np.ndarray) -> np.ndarray:
    """Logits ``(n, K)`` of ``head`` (put in eval mode) for pooled features ``(n, n_layers, dim)``, on its device."""
    head.eval()
    with torch.inference_mode():
        inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(head.feature_mean.device)
        return head(inputs).cpu().numpy()


def predict_proba(head: EmotionHead, features: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``(n, K)`` with softmax temperature ``temperature``."""
    return torch.softmax(torch.from_numpy(predict_logits(head, features)) / temperature, dim=1).numpy()
