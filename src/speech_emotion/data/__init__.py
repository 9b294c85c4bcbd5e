"""Corpora, manifests, label schemas, splits and audio loading."""

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.data.audio import audio_hash
from speech_emotion.data.audio import check_signal
from speech_emotion.data.audio import load_audio
from speech_emotion.data.corpora import CORPORA
from speech_emotion.data.corpora import read_corpus
from speech_emotion.data.dataset import Dataset
from speech_emotion.data.dataset import load_dataset
from speech_emotion.data.labels import LabelSchema
from speech_emotion.data.manifest import Manifest
from speech_emotion.data.manifest import Problem
from speech_emotion.data.manifest import Utterance
from speech_emotion.data.splits import Split
from speech_emotion.data.splits import check_leakage
from speech_emotion.data.splits import leave_speakers_out
from speech_emotion.data.splits import parse_speakers
from speech_emotion.data.splits import random_split
from speech_emotion.data.splits import speaker_disjoint_split

__all__ = [
    "CORPORA",
    "Dataset",
    "LabelSchema",
    "Manifest",
    "Problem",
    "SAMPLING_RATE",
    "Split",
    "Utterance",
    "audio_hash",
    "check_leakage",
    "check_signal",
    "leave_speakers_out",
    "load_audio",
    "load_dataset",
    "parse_speakers",
    "random_split",
    "read_corpus",
    "speaker_disjoint_split",
]
