"""Predictor: one line from a trained model to a prediction.

``Predictor.from_pretrained(MODEL)(path_or_array, sampling_rate=...)`` returns
``{"label": ..., "probabilities": {label: p}}`` with the bundle's class names. The same
object serves ``ser predict``, ``ser evaluate`` and the REST service.

``MODEL`` is a run folder made by ``ser train`` (PyTorch backend: encoder + head in torch),
or a folder made by ``ser export --format onnx`` (ONNX Runtime backend: neither torch nor
transformers is imported). Both give the same dictionaries. This module imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Sequence

import numpy as np

from speech_emotion.data.audio import SAMPLING_RATE, check_signal, load_audio
from speech_emotion.data.prefetch import DECODE_WORKERS, DecodedFile, decode_ahead
from speech_emotion.inference.backends import OnnxBackend, TorchBackend
from speech_emotion.model.metadata import BundleMeta, model_kind

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
"""Values of ``backend=`` in :meth:`Predictor.from_pretrained`."""

BATCH_FILES = 32
"""Files decoded and predicted together by :meth:`Predictor.predict_files` by default."""


class Predictor:
    """Encoder + head of a model, run as ``preprocess → _forward → postprocess``.

    Args:
        backend: a :class:`~speech_emotion.inference.backends.TorchBackend` or
            :class:`~speech_emotion.inference.backends.OnnxBackend`.

    Attributes:
        meta: the model's metadata (:class:`~speech_emotion.model.metadata.BundleMeta`).
        path: the model folder.
        encoder: ``features(signals)`` → pooled per-layer features (used by ``ser evaluate``).
        classes: class names in index order.
        backend_name: ``"torch"`` or ``"onnx"``.
        device: where the encoder runs, as resolved: ``"cpu"``, ``"cuda:0"``, … (PyTorch), or
            the ONNX Runtime provider (``"CPUExecutionProvider"``, ``"CUDAExecutionProvider:0"``).
        precision: ``"fp32"`` or ``"bf16"``.
    """

    def __init__(self, backend: TorchBackend | OnnxBackend):
        self.backend = backend
        self.meta: BundleMeta = backend.meta
        self.path: Path = backend.path
        self.encoder = backend.encoder
        self.classes = list(self.meta.classes)
        self.backend_name = backend.name
        self.device: str = backend.device
        self.precision: str = backend.precision

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        encoder: str | None = None,
        allow_encoder_mismatch: bool = False,
        backend: str = "auto",
        device: str = "auto",
        precision: str | None = None,
    ) -> "Predictor":
        """Load a run folder, a bundle folder, or an ONNX export.

        Args:
            model: a run folder made by ``ser train``, its ``model/`` folder, or a folder
                made by ``ser export --format onnx``.
            encoder: where to find the encoder when it has moved (a folder or hub id);
                by default the path recorded at training, then the reference as given.
                Not for ONNX exports, which carry their encoder.
            allow_encoder_mismatch: load even when the encoder's fingerprint differs from
                the one the head was trained on (predictions are then unreliable).
            backend: ``"auto"`` (ONNX Runtime for an ONNX export, PyTorch otherwise),
                ``"torch"`` or ``"onnx"`` to insist on one.
            device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or
                ``"cuda:N"``. For an ONNX export, ``cuda`` means ONNX Runtime's CUDA provider
                (onnxruntime-gpu), and is an error without it.
            precision: ``"fp32"`` or ``"bf16"``; default: the precision the model was trained
                on (``preprocessing`` in ``model.json``; fp32 when it says nothing). Another one
                is a preprocessing mismatch (bf16 features are not fp32 features).

        Raises:
            BundleError: bundle invalid, encoder not found, fingerprint or preprocessing
                mismatch, or an ONNX file that differs from the one recorded in ``model.json``.
            ValueError: an unknown ``backend``, or one that does not fit the folder; a device
                that is not here (CUDA where there is none); a refused precision.

        Example:
            >>> Predictor.from_pretrained("./no/such/run")
            Traceback (most recent call last):
            ...
            speech_emotion.errors.BundleError: no/such/run: no model.json here or in no/such/run/model;
            pass a run folder made by `ser train` or its model/ folder
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        onnx = model_kind(model) == "onnx"
        if backend == "onnx" and not onnx:
            raise ValueError(
                f"{model}: backend='onnx' needs a folder made by `ser export --format onnx`; export this model first"
            )
        if backend == "torch" and onnx:
            raise ValueError(
                f"{model}: an ONNX export runs with backend='onnx' only; pass the run folder it was exported from for "
                "PyTorch"
            )
        loader = OnnxBackend.load if onnx else TorchBackend.load
        return cls(
            loader(
                model,
                encoder=encoder,
                allow_encoder_mismatch=allow_encoder_mismatch,
                device=device,
                precision=precision,
            )
        )

    def preprocess(self, inputs: str | Path | np.ndarray, sampling_rate: int | None = None) -> np.ndarray:
        """A file path or an array → mono float32 signal at 16 kHz.

        Raises:
            AudioError: unreadable, empty, too short, silent or non-finite audio.
            ValueError: an array without ``sampling_rate``.
        """
        if isinstance(inputs, (str, Path)):
            return load_audio(inputs)[0]
        if sampling_rate is None:
            raise ValueError(
                f"an array input needs sampling_rate=...; this model expects {SAMPLING_RATE} Hz and resamples others"
            )
        return check_signal(np.asarray(inputs), sampling_rate)[0]

    def _forward(self, signals: Sequence[np.ndarray], speaker: str | None = None) -> np.ndarray:
        """Probabilities, shape (n, K), for decoded signals (all of ``speaker``, when given)."""
        if self.meta.speaker_norm:
            raise ValueError(
                f"{self.path}: this model standardises features per speaker (--speaker-norm) and cannot label "
                "single clips; score it with `ser evaluate` on several clips per speaker, or train without "
                "--speaker-norm"
            )
        if not len(signals):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        features = np.stack(self.encoder.features(list(signals)))
        return self.predict_features(features, speaker=speaker)

    def predict_features(self, features: np.ndarray, *, speaker: str | None = None) -> np.ndarray:
        """Probabilities, shape (n, K), from pooled encoder features (n, n_layers, dim).

        Args:
            speaker: who speaks in every row, for a model adapted per speaker (``ser adapt
                --per-speaker``): the rows are standardised by that speaker's statistics.

        Raises:
            ValueError: a ``speaker`` the model was not adapted to.
        """
        if speaker is not None:
            self.check_speaker(speaker)
            features = self.backend.bundle.speakers[speaker].move(features, self.backend.bundle.reference)
        return self.backend.predict_features(features)

    @property
    def speakers(self) -> list[str]:
        """The speakers the model was adapted to (``ser adapt --per-speaker``); usually none."""
        return [listed["speaker"] for listed in self.meta.adaptation.get("speakers", [])]

    def check_speaker(self, speaker: str) -> None:
        """Refuse a speaker the model was not adapted to.

        Raises:
            ValueError: ``speaker`` is not in :attr:`speakers` (the message lists some that are).
        """
        if speaker not in self.speakers:
            listed = ", ".join(self.speakers[:10]) + (" …" if len(self.speakers) > 10 else "")
            raise ValueError(
                f"speaker {speaker!r}: this model was adapted to "
                + (f"{len(self.speakers)} speaker(s) ({listed})" if self.speakers else "no speakers")
                + "; name one of them, or leave the speaker out to use the domain's statistics"
            )

    def postprocess(self, probabilities: np.ndarray, min_confidence: float | None = None) -> dict:
        """``{"label", "probabilities"}`` for one row; ``label`` is ``None`` and ``uncertain`` true below
        ``min_confidence``.
        """
        best = int(np.argmax(probabilities))
        result = {
            "label": self.classes[best],
            "probabilities": {c: float(p) for c, p in zip(self.classes, probabilities)},
        }
        if min_confidence is not None:
            result["uncertain"] = bool(probabilities[best] < min_confidence)
            if result["uncertain"]:
                result["label"] = None
        return result

    def __call__(
        self,
        inputs: str | Path | np.ndarray,
        sampling_rate: int | None = None,
        *,
        min_confidence: float | None = None,
        speaker: str | None = None,
    ) -> dict:
        """Predict one clip (a file path, or an array with its ``sampling_rate``); see :meth:`predict_features`
        for ``speaker``."""
        return self.postprocess(self._forward([self.preprocess(inputs, sampling_rate)], speaker)[0], min_confidence)

    def predict(
        self, signals: Sequence[np.ndarray], *, min_confidence: float | None = None, speaker: str | None = None
    ) -> list[dict]:
        """Predict many decoded 16 kHz signals at once (sorted and batched by length inside the encoder)."""
        return [self.postprocess(p, min_confidence) for p in self._forward(signals, speaker)]

    def predict_files(
        self,
        paths: Iterable[str | Path],
        *,
        batch_size: int = BATCH_FILES,
        min_confidence: float | None = None,
        speaker: str | None = None,
        decode_workers: int = DECODE_WORKERS,
    ) -> Iterator[dict]:
        """Predict audio files in batches; worker threads decode and resample the next files meanwhile.

        Args:
            paths: audio files in any format :func:`~speech_emotion.data.audio.load_audio`
                reads (any rate and channel count); consumed lazily, at most two batches ahead.
            batch_size: files decoded and predicted together (the encoder sorts each batch
                by length).
            min_confidence: below this top probability ``label`` is ``None`` and
                ``uncertain`` true.
            speaker: who speaks in every file (see :meth:`predict_features`).
            decode_workers: threads that decode and resample ahead of the encoder
                (:func:`~speech_emotion.data.prefetch.decode_ahead`); results keep input order.

        Yields:
            One dict per path, in input order: ``{"path", "label", "probabilities"}``, or
            ``{"path", "error"}`` for a file that will not load (the others go on).

        Raises:
            ValueError: ``batch_size`` or ``decode_workers`` below 1.

        Example:
            >>> import numpy as np, soundfile as sf, tempfile, os
            >>> class Constant(Predictor):  # a stand-in model: every clip is 'neutral'
            ...     classes = ["neutral"]
            ...     def __init__(self): pass
            ...     def _forward(self, signals, speaker=None): return np.ones((len(signals), 1))
            >>> folder = tempfile.mkdtemp()
            >>> sf.write(os.path.join(folder, "a.wav"), np.full(8000, 0.1), 16000)
            >>> rows = Constant().predict_files([os.path.join(folder, n) for n in ("a.wav", "gone.wav")])
            >>> [(os.path.basename(r["path"]), r.get("label"), r.get("error")) for r in rows]
            [('a.wav', 'neutral', None), ('gone.wav', None, 'file not found')]
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        decoded = decode_ahead(paths, workers=decode_workers, ahead=max(2 * batch_size, decode_workers))
        try:
            while batch := [file for _, file in zip(range(batch_size), decoded)]:
                yield from self.predict_decoded(batch, min_confidence=min_confidence, speaker=speaker)
        finally:
            decoded.close()  # stop the decoding threads when the caller stops early

    def predict_decoded(
        self, files: Sequence[DecodedFile], *, min_confidence: float | None = None, speaker: str | None = None
    ) -> list[dict]:
        """One row per decoded file, in order: ``{"path", "label", "probabilities"}`` or ``{"path", "error"}``.

        The files that decoded are predicted together (one call to :meth:`predict`; ``speaker`` as there).
        """
        signals = [file.signal for file in files if file.signal is not None]
        results = iter(self.predict(signals, min_confidence=min_confidence, speaker=speaker) if signals else [])
        return [
            {"path": file.path, "error": file.error} if file.signal is None else {"path": file.path, **next(results)}
            for file in files
        ]
