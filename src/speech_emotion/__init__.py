"""speech_emotion: speech emotion recognition on pretrained speech encoders.

Example:
    >>> from speech_emotion import LabelSchema
    >>> LabelSchema.from_name("ravdess-7").n_classes
    7
"""

from speech_emotion.data import LabelSchema
from speech_emotion.data import load_dataset
from speech_emotion.data import read_corpus
from speech_emotion.version import __version__

__all__ = ["LabelSchema", "Predictor", "__version__", "load_dataset", "read_corpus"]


def __getattr__(name: str):
    # Predictor is imported on first use so that `import speech_emotion` stays light
    # (its backends pull in torch or onnxruntime).
    if name == "Predictor":
        from speech_emotion.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'speech_emotion' has no attribute {name!r}")
