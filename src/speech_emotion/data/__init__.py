"""Corpora, manifests, label schemas, splits and audio loading.

The names below are imported on first use (PEP 562) rather than here: importing one light
module of this package (``speech_emotion.data.corpora``, which ``ser --help`` needs for
its option help) then costs no numpy, soundfile, soxr or yaml, and scikit-learn is only
imported by the splitter that uses it.

Example:
    >>> from speech_emotion.data import LabelSchema
    >>> LabelSchema.from_name("ravdess-7").n_classes
    7
"""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "SAMPLING_RATE": "audio",
    "DecodeLimits": "decode_limits",
    "audio_hash": "audio",
    "check_signal": "audio",
    "load_audio": "audio",
    "CORPORA": "corpora",
    "read_corpus": "corpora",
    "Dataset": "dataset",
    "check_speaker_labels": "dataset",
    "load_dataset": "dataset",
    "CorpusSource": "sources",
    "read_corpora": "sources",
    "LabelSchema": "labels",
    "Manifest": "manifest",
    "Problem": "manifest",
    "Utterance": "manifest",
    "Split": "splits",
    "check_leakage": "splits",
    "leave_speakers_out": "splits",
    "parse_speakers": "splits",
    "random_split": "splits",
    "speaker_disjoint_split": "splits",
}
"""Public name → the module of this package that defines it."""

_SUBMODULES = frozenset(_MODULE_OF.values())

__all__ = [
    "CORPORA",
    "CorpusSource",
    "Dataset",
    "DecodeLimits",
    "LabelSchema",
    "Manifest",
    "Problem",
    "SAMPLING_RATE",
    "Split",
    "Utterance",
    "audio_hash",
    "check_leakage",
    "check_signal",
    "check_speaker_labels",
    "leave_speakers_out",
    "load_audio",
    "load_dataset",
    "parse_speakers",
    "random_split",
    "read_corpora",
    "read_corpus",
    "speaker_disjoint_split",
]


def __getattr__(name: str):
    if name in _SUBMODULES:  # `speech_emotion.data.audio` worked without importing it when all were eager
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
