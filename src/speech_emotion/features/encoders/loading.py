"""``load_encoder``: an encoder by reference (``"egemaps"``, a folder, or a Hugging Face hub id)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.devices import check_precision, resolve_device
from speech_emotion.features.encoders.base import Encoder
from speech_emotion.features.encoders.egemaps import EgemapsEncoder
from speech_emotion.features.encoders.fingerprint import model_fingerprint
from speech_emotion.features.encoders.ssl import SSL_MODEL_TYPES, SSLEncoder
from speech_emotion.features.encoders.transformers_logging import quiet_transformers
from speech_emotion.features.encoders.whisper import WhisperEncoder

EXAMPLE_FOLDER = "../shared/models/whisper-base-encoder"
"""A local encoder folder that error messages suggest."""

# Parameters that a checkpoint may lack without changing what a frozen model computes.
_IGNORABLE_MISSING = ("masked_spec_embed",)


def _looks_like_path(reference: str) -> bool:
    """True when ``reference`` cannot be a Hugging Face hub id (``name`` or ``org/name``)."""
    if reference.startswith(("/", ".", "~", "\\")) or "\\" in reference or reference.count("/") > 1:
        return True
    return len(reference) > 1 and reference[1] == ":"  # a Windows drive


def _remedy() -> str:
    return (
        f"pass a local folder such as {EXAMPLE_FOLDER}, a Hugging Face model id that is in the local "
        "cache, or 'egemaps'"
    )


def load_encoder(reference: str, *, device: str | torch.device = "auto", precision: str = "fp32") -> Encoder:
    """Load a frozen encoder by reference.

    ``reference`` is ``"egemaps"``, a local folder saved by ``save_pretrained``, or a
    Hugging Face hub id (``"openai/whisper-base"``, ``"facebook/wav2vec2-base"``); folders and
    hub ids go through the same ``from_pretrained`` call. The family comes from the config's
    ``model_type``: ``"whisper"`` gives a :class:`WhisperEncoder`, one of
    ``SSL_MODEL_TYPES`` gives an :class:`SSLEncoder`. Whisper checkpoints may hold only the
    encoder (``encoder.*`` tensors) or a full sequence-to-sequence model.

    The device changes where the model runs, never its fingerprint or ``preprocessing`` (so
    never a feature-store key); ``precision="bf16"`` is recorded in ``preprocessing``.

    Args:
        reference: ``"egemaps"``, a folder, or a hub id.
        device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` (:func:`~speech_emotion.features.devices.resolve_device`), or a
            ``torch.device``. eGeMAPS runs on the CPU only.
        precision: ``"fp32"`` or ``"bf16"`` (autocast on the forward pass); fp16 is refused
            (:func:`~speech_emotion.features.devices.check_precision`).

    Returns:
        An :class:`Encoder` in eval mode.

    Raises:
        FileNotFoundError: ``reference`` is a path and no such folder exists.
        ValueError: The folder or hub id cannot be loaded (not a model folder, not available
            offline, weights missing) or its ``model_type`` is not supported; the device is
            unknown or absent (CUDA asked for where there is none); the precision is refused;
            eGeMAPS asked for on CUDA or in bf16.
        ImportError: ``"egemaps"`` without the opensmile package.

    Example:
        >>> load_encoder("./no/such/folder")  # a path that does not exist is an error
        Traceback (most recent call last):
        ...
        FileNotFoundError: ./no/such/folder: no such folder; pass a local folder such as ...

        A folder written by ``save_pretrained`` (here a tiny, randomly initialised wav2vec 2.0):

        >>> import tempfile
        >>> import numpy as np
        >>> from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
        >>> folder = tempfile.mkdtemp()
        >>> config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                         intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4),
        ...                         conv_kernel=(10, 8), num_conv_pos_embeddings=8,
        ...                         num_conv_pos_embedding_groups=2)
        >>> Wav2Vec2Model(config).save_pretrained(folder)
        >>> _ = Wav2Vec2FeatureExtractor().save_pretrained(folder)
        >>> encoder = load_encoder(folder)
        >>> encoder.family, encoder.n_layers, encoder.dim  # embeddings + 2 layers; mean and std
        ('ssl', 3, 32)
        >>> [f.shape for f in encoder.features([np.zeros(16000), np.zeros(8000)])]
        [(3, 32), (3, 32)]
    """
    if not isinstance(reference, (str, os.PathLike)):
        raise TypeError(f"reference: expected a str (folder, hub id or 'egemaps'), got {type(reference).__name__}")
    reference = os.fspath(reference)
    precision = check_precision(precision)
    torch_device = resolve_device(str(device))
    if reference.strip().lower() == "egemaps":
        on_cpu = torch_device.type == "cpu" or str(device) == "auto"  # auto: the CPU is where openSMILE runs
        if not on_cpu or precision != "fp32":
            raise ValueError(
                f"encoder 'egemaps' runs on the CPU in fp32 only (openSMILE), got device {str(device)!r} and precision "
                f"{precision!r}; pass --device cpu (or auto) and --precision fp32"
            )
        return EgemapsEncoder(reference=reference)

    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{reference}: expected a model folder holding config.json and weights, got a file; "
                "pass the folder that contains it"
            )
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{reference}: expected config.json in this folder (a model saved with save_pretrained), "
                f"found none; {_remedy()}"
            )
        source = str(path)
    elif _looks_like_path(reference):
        raise FileNotFoundError(f"{reference}: no such folder; {_remedy()}")
    else:
        source = reference

    from transformers import AutoConfig

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if path.exists():
            problem = f"expected a model folder that transformers can read, got an error ({detail})"
        else:
            problem = f"not an existing folder, and not a Hugging Face model available offline ({detail})"
        raise ValueError(f"{reference}: {problem}; {_remedy()}") from exc

    model_type = getattr(config, "model_type", None)
    if model_type == "whisper":
        return _load_whisper(reference, source, config, torch_device, precision)
    if model_type in SSL_MODEL_TYPES:
        return _load_ssl(reference, source, config, torch_device, precision)
    raise ValueError(
        f"{reference}: model_type {model_type!r} is not a supported speech encoder; expected 'whisper' "
        f"or one of {', '.join(repr(t) for t in SSL_MODEL_TYPES)}, or use 'egemaps'"
    )


def _load_feature_extractor(reference: str, source: str) -> Any:
    from transformers import AutoFeatureExtractor

    try:
        with quiet_transformers():
            extractor = AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{reference}: expected a feature extractor (preprocessor_config.json) beside the model, "
            f"could not load one ({type(exc).__name__}); save it with feature_extractor.save_pretrained "
            "into the same folder"
        ) from exc
    sampling_rate = getattr(extractor, "sampling_rate", SAMPLING_RATE)
    if sampling_rate != SAMPLING_RATE:
        raise ValueError(
            f"{reference}: the feature extractor expects {sampling_rate} Hz, but encoders here take "
            f"{SAMPLING_RATE} Hz input; use a 16 kHz model"
        )
    return extractor


def _check_missing(reference: str, missing: Sequence[str], prefix: str) -> None:
    missing = [k for k in missing if k.startswith(prefix) and not any(s in k for s in _IGNORABLE_MISSING)]
    if missing:
        raise ValueError(
            f"{reference}: expected weights for every encoder tensor, but {len(missing)} are missing "
            f"from the checkpoint (e.g. {', '.join(sorted(missing)[:3])}); they would be random. "
            "Pass a folder saved from a pretrained model"
        )


def _load_whisper(reference: str, source: str, config: Any, device: torch.device, precision: str) -> WhisperEncoder:
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    extractor = _load_feature_extractor(reference, source)
    if not isinstance(extractor, WhisperFeatureExtractor):
        raise ValueError(
            f"{reference}: expected a WhisperFeatureExtractor for a Whisper model, got {type(extractor).__name__}"
        )
    try:
        # Holds the encoder whether the checkpoint stores encoder.* (encoder only) or
        # model.encoder.* (full sequence-to-sequence model); the classifier head is unused.
        with quiet_transformers():
            model, info = WhisperForAudioClassification.from_pretrained(
                source, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{reference}: could not load Whisper weights ({type(exc).__name__}: {exc}); {_remedy()}"
        ) from exc
    _check_missing(reference, info.get("missing_keys", []), "encoder.")
    encoder = model.encoder.eval()
    encoder.requires_grad_(False)
    del model
    # Hashed before it moves: the fingerprint is the weights', whatever device they run on.
    fingerprint = model_fingerprint(family="whisper", source=source, config=config, extractor=extractor, module=encoder)
    return WhisperEncoder(
        reference=reference,
        model=encoder.to(device),
        feature_extractor=extractor,
        fingerprint=fingerprint,
        device=device,
        precision=precision,
    )


def _load_ssl(reference: str, source: str, config: Any, device: torch.device, precision: str) -> SSLEncoder:
    from transformers import AutoModel

    extractor = _load_feature_extractor(reference, source)
    try:
        with quiet_transformers():
            model, info = AutoModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{reference}: could not load model weights ({type(exc).__name__}: {exc}); {_remedy()}"
        ) from exc
    missing = list(info.get("missing_keys", []))
    _check_missing(reference, missing, "")
    model = model.eval()
    model.requires_grad_(False)
    fingerprint = model_fingerprint(
        family="ssl", source=source, config=config, extractor=extractor, module=model, skip=missing
    )
    return SSLEncoder(
        reference=reference,
        model=model.to(device),
        feature_extractor=extractor,
        fingerprint=fingerprint,
        device=device,
        precision=precision,
    )
