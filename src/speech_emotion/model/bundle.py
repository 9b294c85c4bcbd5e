"""Model bundles: ``model.safetensors`` (head weights) + ``model.json`` (everything else).

Loading never executes code: the weights are safetensors, the metadata JSON, and the
format tag is checked before anything else is read (DESIGN invariant 7). A bundle whose
classes, head size or indices disagree refuses to load (invariant 1).

Example:
    >>> import tempfile
    >>> from speech_emotion.model.head import EmotionHead, HeadConfig
    >>> head = EmotionHead(HeadConfig(n_layers=2, dim=4, n_classes=2, hidden=0))
    >>> folder = tempfile.mkdtemp()
    >>> save_bundle(folder, head, {"classes": ["neutral", "happy"], "schema": {"classes": ["neutral", "happy"]}})
    >>> load_bundle(folder).classes
    ['neutral', 'happy']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from speech_emotion.atomic import write_bytes, write_json
from speech_emotion.data.labels import LabelSchema
from speech_emotion.errors import BundleError
from speech_emotion.model.head import EmotionHead, HeadConfig

BUNDLE_FORMAT = "speech-emotion/bundle"
BUNDLE_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class Bundle:
    """A loaded bundle: the head and its metadata."""

    head: EmotionHead
    meta: dict
    path: Path

    @property
    def classes(self) -> list[str]:
        """Class names in index order."""
        return list(self.meta["classes"])

    @property
    def schema(self) -> LabelSchema:
        return LabelSchema.from_dict(self.meta["schema"])

    @property
    def temperature(self) -> float:
        """Softmax temperature fitted on validation speakers (1.0 when not calibrated)."""
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))


def find_bundle(path: str | Path) -> Path:
    """The bundle folder for a run folder (``RUN/model``) or a bundle folder itself."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / META).is_file():
            return candidate
    raise BundleError(
        f"{path}: no {META} here or in {path / 'model'}; pass a run folder made by `ser train` or its model/ folder"
    )


def save_bundle(path: str | Path, head: EmotionHead, meta: dict) -> None:
    """Write weights, then metadata (the metadata's presence marks a complete bundle).

    ``meta`` must hold ``classes`` and ``schema``; format tag, version and head config are added.
    """
    path = Path(path)
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **meta, "head": head.config.to_dict()}
    _check(meta, head.config, path)
    write_bytes(
        path / WEIGHTS,
        save_safetensors({k: v.contiguous() for k, v in head.state_dict().items()}, metadata={"format": BUNDLE_FORMAT}),
    )
    write_json(path / META, meta)


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle; refuse one that is not ours, is newer, or disagrees with itself.

    Raises:
        BundleError: wrong format tag or version, classes ≠ schema classes, head outputs ≠ K,
            missing or mismatched weights.
    """
    path = find_bundle(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BundleError(f"{path / META}: not valid JSON ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path / META}: not a speech-emotion bundle (format tag "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {BUNDLE_FORMAT!r})"
        )
    if not isinstance(meta.get("version"), int) or meta["version"] > BUNDLE_VERSION:
        raise BundleError(
            f"{path / META}: bundle version {meta.get('version')!r} is newer than this speech-emotion reads "
            f"({BUNDLE_VERSION}); upgrade speech-emotion"
        )
    config = HeadConfig.from_dict(meta["head"])
    _check(meta, config, path)
    weights_file = path / WEIGHTS
    if not weights_file.is_file():
        raise BundleError(f"{weights_file}: missing; the bundle is incomplete (was training interrupted?)")
    state = load_safetensors(weights_file.read_bytes())
    head = EmotionHead(config)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BundleError(
            f"{weights_file}: weights do not fit the head config in {META}: {str(error).splitlines()[0]}"
        ) from None
    if head.n_outputs != len(meta["classes"]):
        raise BundleError(
            f"Cannot assign {len(meta['classes'])} labels to a head with {head.n_outputs} outputs ({path})"
        )
    head.eval()
    return Bundle(head, meta, path)


def _check(meta: dict, config: HeadConfig, path: Path) -> None:
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        raise BundleError(f"{path}: model.json needs a non-empty 'classes' list in index order")
    schema = LabelSchema.from_dict(meta["schema"])
    if list(schema.classes) != classes:
        raise BundleError(f"{path}: classes {classes} disagree with the schema's classes {list(schema.classes)}")
    indices = sorted(set(schema.label_to_index.values()))
    if indices != list(range(len(classes))):
        raise BundleError(f"{path}: label indices {indices} are not 0..{len(classes) - 1}")
    if config.n_classes != len(classes):
        raise BundleError(f"Cannot assign {len(classes)} labels to a head with {config.n_classes} outputs ({path})")
