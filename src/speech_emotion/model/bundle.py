"""Model bundles: ``model.safetensors`` (head weights) + ``model.json`` (:class:`~.metadata.BundleMeta`).

Loading never executes code: the weights are safetensors, the metadata JSON, and the
format tag is checked before anything else is read (DESIGN invariant 7). A bundle whose
classes, head size or indices disagree refuses to load (invariant 1).

Example:
    >>> import tempfile
    >>> from speech_emotion.model.head import EmotionHead, HeadConfig
    >>> from speech_emotion.model.metadata import BundleMeta, EncoderRef
    >>> head = EmotionHead(HeadConfig(n_layers=2, dim=4, n_classes=2, hidden=0))
    >>> folder = tempfile.mkdtemp()
    >>> meta = BundleMeta(classes=("neutral", "happy"), schema={"classes": ["neutral", "happy"]},
    ...                   encoder=EncoderRef(reference="egemaps"))
    >>> _ = save_bundle(folder, head, meta)
    >>> load_bundle(folder).classes
    ['neutral', 'happy']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from speech_emotion.atomic import write_bytes, write_json
from speech_emotion.data.labels import LabelSchema
from speech_emotion.errors import BundleError
from speech_emotion.features.normalise import DomainStatistics
from speech_emotion.model.head import EmotionHead
from speech_emotion.model.metadata import BUNDLE_FORMAT, META_FILE, WEIGHTS_FILE, BundleMeta

DOMAIN_PREFIX = "domain/"
"""Tensors ``domain/mean`` and ``domain/scale`` in ``model.safetensors``: the domain statistics folded into the
head's scaler (see :meth:`~speech_emotion.model.head.EmotionHead.fold_domain`), when the model has any."""

SPEAKER_PREFIX = "speaker/"
"""Tensors ``speaker/<i>/mean`` and ``speaker/<i>/scale``: the statistics of the i-th speaker listed under
``adaptation["speakers"]`` in ``model.json`` (a model adapted with ``ser adapt --per-speaker``)."""


@dataclass
class Bundle:
    """A loaded bundle: the head, its metadata, the folder it came from, and its domain statistics.

    Attributes:
        domain: ``(mean, scale)`` of the domain the head's scaler is set for (training corpora pooled,
            or the domain ``ser adapt`` estimated), or None for a model trained without domain statistics.
        speakers: each known speaker's statistics (``ser adapt --per-speaker``); a clip of a listed
            speaker is moved onto :attr:`reference` before the head sees it.
    """

    head: EmotionHead
    meta: BundleMeta
    path: Path
    domain: tuple[np.ndarray, np.ndarray] | None = None
    speakers: dict[str, DomainStatistics] = field(default_factory=dict)

    @property
    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, scale)`` of the inputs the head expects: its domain, or (without one) its training data's."""
        if self.domain is not None:
            return self.domain
        return self.head.feature_mean.detach().cpu().numpy(), self.head.feature_scale.detach().cpu().numpy()

    @property
    def classes(self) -> list[str]:
        """Class names in index order."""
        return list(self.meta.classes)

    @property
    def schema(self) -> LabelSchema:
        return self.meta.label_schema

    @property
    def temperature(self) -> float:
        """Softmax temperature fitted on validation speakers (1.0 when not calibrated)."""
        return self.meta.temperature


def save_bundle(
    path: str | Path,
    head: EmotionHead,
    meta: BundleMeta,
    *,
    domain: tuple[np.ndarray, np.ndarray] | None = None,
    speakers: dict[str, DomainStatistics] | None = None,
) -> BundleMeta:
    """Write weights, then metadata (the metadata's presence marks a complete bundle).

    The head's config is recorded in the metadata, which is checked as a loader would check it.
    ``domain`` (mean, scale) are the statistics the head's scaler is set for, kept beside the weights;
    ``speakers`` each speaker's statistics, listed (with their clip counts) under ``adaptation["speakers"]``.

    Returns:
        The metadata written.
    """
    path = Path(path)
    if speakers:
        listed = [{"speaker": s, "n_clips": stats.n_clips} for s, stats in speakers.items()]
        meta = meta.replace(adaptation={**meta.adaptation, "speakers": listed})
    meta = BundleMeta.from_dict(meta.replace(kind="torch", head=head.config).to_dict(), where=str(path / META_FILE))
    tensors = {k: v.contiguous() for k, v in head.state_dict().items()}
    if domain is not None:
        tensors |= _statistics_tensors(DOMAIN_PREFIX, domain)
    for i, stats in enumerate((speakers or {}).values()):
        tensors |= _statistics_tensors(f"{SPEAKER_PREFIX}{i}/", (stats.mean, stats.scale))
    write_bytes(path / WEIGHTS_FILE, save_safetensors(tensors, metadata={"format": BUNDLE_FORMAT}))
    write_json(path / META_FILE, meta.to_dict())
    return meta


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle; refuse one that is not ours, is newer, or disagrees with itself.

    Raises:
        BundleError: wrong format tag or version, an ONNX export, classes ≠ schema classes,
            head outputs ≠ K, missing or mismatched weights.
    """
    meta, folder = BundleMeta.read(path)
    if meta.kind != "torch" or meta.head is None:
        raise BundleError(
            f"{folder / META_FILE}: a model of kind {meta.kind!r} has no PyTorch head; load it with "
            "Predictor.from_pretrained (which runs ONNX exports with onnxruntime)"
        )
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise BundleError(f"{weights_file}: missing; the bundle is incomplete (was training interrupted?)")
    state = load_safetensors(weights_file.read_bytes())
    domain = _pop_statistics(state, DOMAIN_PREFIX)
    speakers = {}
    for i, listed in enumerate(meta.adaptation.get("speakers", [])):
        mean, scale = _pop_statistics(state, f"{SPEAKER_PREFIX}{i}/") or (None, None)
        if mean is None:
            raise BundleError(f"{weights_file}: no statistics for speaker {listed['speaker']!r} listed in {META_FILE}")
        speakers[listed["speaker"]] = DomainStatistics(mean, scale, listed["n_clips"])
    head = EmotionHead(meta.head)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BundleError(
            f"{weights_file}: weights do not fit the head config in {META_FILE}: {str(error).splitlines()[0]}"
        ) from None
    if head.n_outputs != meta.n_classes:
        raise BundleError(f"Cannot assign {meta.n_classes} labels to a head with {head.n_outputs} outputs ({folder})")
    head.eval()
    return Bundle(head, meta, folder, domain, speakers)


def _statistics_tensors(prefix: str, statistics: tuple[np.ndarray, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}{name}": torch.as_tensor(np.asarray(v, np.float32)) for name, v in zip(("mean", "scale"), statistics)
    }


def _pop_statistics(state: dict[str, torch.Tensor], prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mean, scale)`` stored under ``prefix``, removed from ``state``; None when there are none."""
    if f"{prefix}mean" not in state:
        return None
    return state.pop(f"{prefix}mean").numpy(), state.pop(f"{prefix}scale").numpy()
