"""A speech_emotion head as the weights of a stock transformers audio classification head.

Stock heads (``Wav2Vec2ForSequenceClassification`` and its HuBERT / WavLM / data2vec-audio
siblings, ``WhisperForAudioClassification``) compute::

    logits = classifier(pool_t(projector(sum_l softmax(layer_weights)_l * hidden[l, t])))

with only linear layers and a mean (no std) over frames. An ``hf_compatible`` linear head is
that function of the per-layer frame means, so :func:`hf_head_weights` copies it exactly;
:func:`stock_model` builds the stock class around the encoder's own weights and
:func:`set_head` puts the copied head in it.

Example:
    >>> from speech_emotion.model.head import EmotionHead, HeadConfig
    >>> head = EmotionHead(HeadConfig(n_layers=3, dim=8, n_classes=2, hidden=0, hf_compatible=True))
    >>> sorted(hf_head_weights(head))
    ['classifier.bias', 'classifier.weight', 'layer_weights', 'projector.bias', 'projector.weight']
    >>> hf_head_weights(EmotionHead(HeadConfig(n_layers=3, dim=8, n_classes=2, hidden=16)))
    Traceback (most recent call last):
    ...
    speech_emotion.errors.BundleError: the head has a hidden layer (hidden=16) ...
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from speech_emotion.errors import BundleError
from speech_emotion.model.head import EmotionHead

RETRAIN_HINT = (
    "retrain with TrainConfig(hidden=0, hf_compatible=True) (`ser train ... --hidden 0 --hf-compatible`): a linear "
    "head "
    "on mean features with a standardisation shared across layers, which a stock transformers head computes exactly"
)


def hf_head_weights(head: EmotionHead, *, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """The weights of a stock transformers head that computes ``head``'s logits / ``temperature``.

    The stock head sees mean-pooled hidden states ``mu[l]`` (per layer, width H) and computes
    ``classifier(projector(sum_l v_l mu[l]))`` with ``v = softmax(layer_weights)``. Our
    ``hf_compatible`` head computes ``W sum_l w_l (mu[l] - m[l]) / (a_l * s) + b`` with layer
    factors ``a`` and a shared scale ``s``; with ``u_l = w_l / a_l``, ``v = u / sum(u)``,
    ``projector = diag(sum(u) / s)`` with bias ``-sum_l w_l m[l] / (a_l s)``, and
    ``classifier = (W, b) / temperature``, the two are equal.

    Args:
        head: a trained head with ``hidden=0`` and ``hf_compatible=True``.
        temperature: softmax temperature of the bundle (folded into the classifier).

    Returns:
        float32 tensors ``layer_weights`` (L,), ``projector.weight`` (H, H), ``projector.bias``
        (H,), ``classifier.weight`` (K, H), ``classifier.bias`` (K,), where H is half the
        head's feature width (the mean half).

    Raises:
        BundleError: the head has a hidden layer, uses std features or per-layer scales, or
            its scales are not one shared vector times a factor per layer.
    """
    config = head.config
    if config.hidden:
        raise BundleError(
            f"the head has a hidden layer (hidden={config.hidden}) and a stock transformers head is linear; "
            f"{RETRAIN_HINT}"
        )
    if getattr(config, "mixing", "softmax") != "softmax":
        raise BundleError(
            f"the head concatenates the encoder layers (mixing={config.mixing!r}) and a stock transformers head sums "
            "them "
            f"with softmax weights; {RETRAIN_HINT}"
        )
    if not config.hf_compatible:
        raise BundleError(
            "the head reads mean+std pooled features with a separate standardisation per layer; a stock transformers "
            "head "
            f"pools only the mean over frames and standardises after the weighted layer sum; {RETRAIN_HINT}"
        )
    if not temperature > 0:
        raise BundleError(f"calibration temperature must be positive, got {temperature}")
    n_half = config.dim // 2
    with torch.no_grad():
        mean = head.feature_mean[:, :n_half].double()
        scale = head.feature_scale[:, :n_half].double()
        shared = scale[0]
        factors = (scale / shared).mean(dim=1)
        deviation = float(((factors[:, None] * shared - scale).abs() / scale).max())
        if deviation > 1e-4:
            raise BundleError(
                f"the head's feature scales are not one vector shared by all layers times a factor per layer (relative "
                f"deviation {deviation:.2g}); they were not fitted by an hf_compatible head; {RETRAIN_HINT}"
            )
        w = head.layer_weights().double()
        u = w / factors
        total = u.sum()
        classifier = head.classifier
        return {
            "layer_weights": torch.log(u / total).float(),
            "projector.weight": torch.diag(total / shared).float(),
            "projector.bias": (-(w[:, None] * mean / scale).sum(dim=0)).float(),
            "classifier.weight": (classifier.weight.double() / temperature).float(),
            "classifier.bias": (classifier.bias.double() / temperature).float(),
        }


def _hf_config(encoder_config: Any, classes: Sequence[str], n_hidden: int) -> Any:
    config = copy.deepcopy(encoder_config)
    config.use_weighted_layer_sum = True
    config.classifier_proj_size = n_hidden
    config.id2label = {i: name for i, name in enumerate(classes)}
    config.label2id = {name: i for i, name in enumerate(classes)}
    config.num_labels = len(classes)
    config.problem_type = "single_label_classification"
    config.dtype = "float32"
    for key in ("_name_or_path",):
        if hasattr(config, key):
            setattr(config, key, "")
    return config


def stock_model(encoder, classes: Sequence[str]) -> torch.nn.Module:
    """A stock classification model holding ``encoder``'s exact weights (head not set yet)."""
    from transformers import AutoModelForAudioClassification

    module = encoder.module  # the frozen transformers module whose weights the fingerprint covers
    config = _hf_config(module.config, classes, encoder.hidden_size)
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config)
    config.architectures = [type(model).__name__]
    target = model.encoder if encoder.family == "whisper" else model.base_model
    try:
        target.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as error:
        raise BundleError(
            f"{encoder.reference}: the encoder's weights do not fit {type(model).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return model.eval()


def set_head(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (from :func:`hf_head_weights`) into the stock model's head, checking every shape."""
    state = model.state_dict()
    for name, value in weights.items():
        if state[name].shape != value.shape:
            raise BundleError(
                f"{type(model).__name__}.{name}: expected shape {tuple(state[name].shape)}, got {tuple(value.shape)}"
            )
    with torch.no_grad():
        model.layer_weights.copy_(weights["layer_weights"])
        model.projector.weight.copy_(weights["projector.weight"])
        model.projector.bias.copy_(weights["projector.bias"])
        model.classifier.weight.copy_(weights["classifier.weight"])
        model.classifier.bias.copy_(weights["classifier.bias"])


def load_feature_extractor(encoder):
    """The encoder's own transformers feature extractor, saved with the export as ``preprocessor_config.json``."""
    from transformers import AutoFeatureExtractor

    if getattr(encoder, "feature_extractor", None) is not None:
        return encoder.feature_extractor
    try:
        return AutoFeatureExtractor.from_pretrained(encoder.reference)
    except (OSError, ValueError) as error:
        raise BundleError(
            f"{encoder.reference}: cannot load the encoder's feature extractor (preprocessor_config.json): {error}"
        ) from None
