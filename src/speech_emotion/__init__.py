"""speech_emotion: speech emotion recognition on pretrained speech encoders."""

from speech_emotion.data import LabelSchema
from speech_emotion.data import load_dataset
from speech_emotion.data import read_corpus

__version__ = "0.1.0"

__all__ = ["LabelSchema", "load_dataset", "read_corpus"]
