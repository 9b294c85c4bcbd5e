"""What a model folder says about itself: ``model.json`` as :class:`BundleMeta`, its encoder as :class:`EncoderRef`.

One reader for both kinds of model folder: a bundle made by ``ser train`` (``kind="torch"``:
the head in ``model.safetensors``) and an export made by ``ser export --format onnx``
(``kind="onnx"``: ``encoder.onnx`` and ``head.onnx``). The kind is written in ``model.json``;
folders written before it was are told apart by their ``onnx`` section. Reading checks the
format tag and version first, then that the classes, the schema and the head agree
(DESIGN invariants 1 and 7). This module imports neither torch nor onnxruntime.

Example:
    >>> meta = BundleMeta.from_dict({
    ...     "format": BUNDLE_FORMAT, "version": 1, "classes": ["neutral", "happy"],
    ...     "schema": {"classes": ["neutral", "happy"]}, "encoder": {"reference": "egemaps"}})
    >>> meta.kind, meta.classes, meta.temperature, meta.encoder.reference
    ('torch', ('neutral', 'happy'), 1.0, 'egemaps')
    >>> BundleMeta.from_dict(meta.to_dict() | {"classes": ["happy", "neutral"]})
    Traceback (most recent call last):
    ...
    speech_emotion.errors.BundleError: model.json: classes ['happy', 'neutral'] disagree with the schema's classes
    ['neutral', 'happy']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speech_emotion.errors import BundleError

if TYPE_CHECKING:
    from speech_emotion.data.labels import LabelSchema

META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
BUNDLE_FORMAT = "speech-emotion/bundle"
BUNDLE_VERSION = 1
ONNX_FORMAT = "speech-emotion/onnx"
ONNX_VERSION = 1
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
    def from_dict(cls, spec: dict) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise BundleError(f"head config has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**spec)


KINDS = ("torch", "onnx")
"""``torch``: a bundle made by ``ser train``; ``onnx``: a folder made by ``ser export --format onnx``."""


def _unknown(where: str, spec: dict, known: list[str]) -> None:
    unknown = [key for key in spec if key not in known]
    if unknown:
        raise BundleError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; expected "
            f"only {', '.join(known)} (was it written by a newer speech-emotion?)"
        )


@dataclass(frozen=True)
class EncoderRef:
    """Which encoder a model runs on, and how to find it again.

    Attributes:
        reference: the ``--encoder`` value as given (a folder, a hub id or ``"egemaps"``).
        path: the folder's absolute path when ``reference`` was a local folder.
        family: ``"whisper"``, ``"ssl"`` or ``"egemaps"`` (known once loaded).
        fingerprint: sha256 of the encoder's config and weights (known once loaded).
        n_layers: layers in the pooled features.
        dim: feature width per layer.
        bundled: a folder inside the bundle that holds the encoder (a fine-tuned one).
        base_fingerprint: the pretrained encoder's fingerprint, for a fine-tuned one.

    Example:
        >>> EncoderRef.from_dict({"reference": "openai/whisper-base", "weights": "x"})
        Traceback (most recent call last):
        ...
        speech_emotion.errors.BundleError: encoder: unknown key 'weights'; expected only reference, path, family,
        fingerprint, n_layers, dim, bundled, base_fingerprint (was it written by a newer speech-emotion?)
    """

    reference: str
    path: str | None = None
    family: str | None = None
    fingerprint: str | None = None
    n_layers: int | None = None
    dim: int | None = None
    bundled: str | None = None
    base_fingerprint: str | None = None

    @classmethod
    def of(cls, encoder: Any, *, reference: str, path: str | None = None) -> EncoderRef:
        """The reference of a loaded encoder (anything with family, fingerprint, n_layers, dim)."""
        return cls(
            reference=reference,
            path=path,
            family=encoder.family,
            fingerprint=encoder.fingerprint,
            n_layers=int(encoder.n_layers),
            dim=int(encoder.dim),
        )

    @property
    def source(self) -> str:
        """Where to load the encoder from: the recorded folder when it is still there, else the reference."""
        return self.path if self.path and Path(self.path).exists() else self.reference

    def bundled_folder(self, bundle: Path) -> Path | None:
        """The folder inside ``bundle`` that holds the encoder, or None.

        Raises:
            BundleError: ``bundled`` points outside the bundle.
        """
        if not self.bundled:
            return None
        inside = Path(self.bundled)
        if inside.is_absolute() or ".." in inside.parts:
            raise BundleError(
                f"{bundle / META_FILE}: encoder.bundled must be a folder inside the bundle, got {self.bundled!r}"
            )
        return bundle / inside

    def to_dict(self) -> dict:
        """JSON form; ``bundled`` and ``base_fingerprint`` only when set (as bundles always had it)."""
        spec = asdict(self)
        for key in ("bundled", "base_fingerprint"):
            if spec[key] is None:
                del spec[key]
        return spec

    @classmethod
    def from_dict(cls, spec: dict, *, where: str = "encoder") -> EncoderRef:
        if not isinstance(spec, dict) or not isinstance(spec.get("reference"), str):
            raise BundleError(f"{where}: expected an object with the encoder's 'reference', got {spec!r}")
        _unknown(where, spec, [f.name for f in fields(cls)])
        return cls(**spec)


@dataclass(frozen=True)
class BundleMeta:
    """``model.json``: everything about a model but its weights.

    Attributes:
        kind: ``"torch"`` or ``"onnx"`` (see :data:`KINDS`).
        classes: class names in index order.
        schema: the :class:`~speech_emotion.data.labels.LabelSchema` as a dict.
        encoder: the encoder it runs on.
        preprocessing: what the encoder does to its input (part of the feature-store key).
        head: the head's shape (the torch head's; None in an ONNX export made before it was recorded).
        train: the training recipe, resolved.
        speaker_norm: features are standardised per speaker (no single-clip labels).
        calibration: ``temperature`` and the calibration figures.
        metrics: validation/test figures of the run.
        data: fingerprint, corpora, protocol, speakers and audio hashes trained on.
        onnx: the ONNX export's section (files, inputs, quantization), for ``kind="onnx"``.
        adaptation: which domain statistics the head's scaler is set for: ``{"domain_norm", "adapted",
            "domain", "n_clips", ...}`` (empty for a model trained without domain statistics).
    """

    classes: tuple[str, ...]
    schema: dict
    encoder: EncoderRef
    kind: str = "torch"
    preprocessing: dict = field(default_factory=dict)
    head: HeadConfig | None = None
    train: dict | None = None
    speaker_norm: bool = False
    calibration: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    onnx: dict | None = None
    adaptation: dict = field(default_factory=dict)

    @property
    def label_schema(self) -> LabelSchema:
        from speech_emotion.data.labels import LabelSchema

        return LabelSchema.from_dict(self.schema)

    @property
    def temperature(self) -> float:
        """Softmax temperature fitted on validation speakers (1.0 when not calibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def replace(self, **changes: Any) -> BundleMeta:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        spec = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": self.kind, "classes": list(self.classes)}
        spec |= {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("kind", "classes")}
        spec["encoder"] = self.encoder.to_dict()
        spec["head"] = self.head.to_dict() if self.head is not None else None
        optional = {"head": None, "onnx": None, "adaptation": {}}  # left out when not set, as older bundles had them
        return {key: value for key, value in spec.items() if key not in optional or value != optional[key]}

    @classmethod
    def from_dict(cls, spec: Any, *, where: str = META_FILE) -> BundleMeta:
        """Check and read a ``model.json``.

        Raises:
            BundleError: another format, a newer version, an unknown key, classes that
                disagree with the schema or the head, indices that are not 0..K-1.
        """
        tag = spec.get("format") if isinstance(spec, dict) else None
        if tag != BUNDLE_FORMAT:
            raise BundleError(f"{where}: not a speech-emotion bundle (format tag {tag!r}, expected {BUNDLE_FORMAT!r})")
        if not isinstance(spec.get("version"), int) or spec["version"] > BUNDLE_VERSION:
            raise BundleError(
                f"{where}: bundle version {spec.get('version')!r} is newer than this speech-emotion reads "
                f"({BUNDLE_VERSION}); upgrade speech-emotion"
            )
        _unknown(where, spec, ["format", "version", *(f.name for f in fields(cls))])
        kind = spec.get("kind") or ("onnx" if isinstance(spec.get("onnx"), dict) else "torch")
        if kind not in KINDS:
            raise BundleError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "onnx":
            _check_onnx_section(spec.get("onnx"), where)
        classes = spec.get("classes")
        if not isinstance(classes, list) or not classes:
            raise BundleError(f"{where}: needs a non-empty 'classes' list in index order")
        if not isinstance(spec.get("schema"), dict):
            raise BundleError(f"{where}: needs the label 'schema' the model was trained with")
        # Imported here: the label schema module imports numpy and yaml, and the CLI reads this
        # module (through TrainConfig) to build its --help.
        from speech_emotion.data.labels import LabelSchema

        schema = LabelSchema.from_dict(spec["schema"])
        if list(schema.classes) != classes:
            raise BundleError(f"{where}: classes {classes} disagree with the schema's classes {list(schema.classes)}")
        indices = sorted(set(schema.label_to_index.values()))
        if indices != list(range(len(classes))):
            raise BundleError(f"{where}: label indices {indices} are not 0..{len(classes) - 1}")
        head = HeadConfig.from_dict(spec["head"]) if spec.get("head") is not None else None
        if head is not None and head.n_classes != len(classes):
            raise BundleError(f"Cannot assign {len(classes)} labels to a head with {head.n_classes} outputs ({where})")
        values = {k: v for k, v in spec.items() if k not in ("format", "version")}
        values |= {
            "kind": kind,
            "classes": tuple(classes),
            "encoder": EncoderRef.from_dict(spec.get("encoder"), where=f"{where}: encoder"),
            "head": head,
        }
        for key in ("preprocessing", "calibration", "metrics", "data", "adaptation"):
            values[key] = values.get(key) or {}
        values["speaker_norm"] = bool(values.get("speaker_norm", False))
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> tuple[BundleMeta, Path]:
        """The metadata of a model folder, a run folder (``RUN/model``) or an ONNX export, and that folder.

        Raises:
            BundleError: no ``model.json``, unreadable JSON, or a check of :meth:`from_dict` fails.
        """
        folder = find_bundle(path)
        meta_file = folder / META_FILE
        try:
            spec = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BundleError(f"{meta_file}: not valid JSON ({error})") from error
        return cls.from_dict(spec, where=str(meta_file)), folder


def _check_onnx_section(section: Any, where: str) -> None:
    if not isinstance(section, dict) or section.get("format") != ONNX_FORMAT:
        raise BundleError(
            f"{where}: 'onnx' section missing or not {ONNX_FORMAT!r}; re-export with `ser export --format onnx`"
        )
    if not isinstance(section.get("version"), int) or section["version"] > ONNX_VERSION:
        raise BundleError(
            f"{where}: ONNX export version {section.get('version')!r} is newer than this speech-emotion reads "
            f"({ONNX_VERSION}); upgrade speech-emotion"
        )


def find_bundle(path: str | Path) -> Path:
    """The model folder for a run folder (``RUN/model``) or a model folder itself.

    Raises:
        BundleError: neither holds a ``model.json``.
    """
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / META_FILE).is_file():
            return candidate
    raise BundleError(
        f"{path}: no {META_FILE} here or in {path / 'model'}; pass a run folder made by `ser train` or its model/ "
        "folder"
    )


def model_kind(path: str | Path) -> str | None:
    """``"torch"`` or ``"onnx"`` for a model folder (as :meth:`BundleMeta.read` finds it); None for anything else."""
    try:
        return BundleMeta.read(path)[0].kind
    except BundleError:
        return None
