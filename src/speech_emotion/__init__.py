"""speech_emotion: speech emotion recognition on pretrained speech encoders.

Example:
    >>> from speech_emotion import LabelSchema
    >>> LabelSchema.from_name("ravdess-7").n_classes
    7
"""

from speech_emotion.version import __version__

__all__ = ["LabelSchema", "Predictor", "__version__", "load_dataset", "read_corpus"]


def __getattr__(name: str):
    # Imported on first use so that `import speech_emotion` (and `ser --help`) stays light:
    # the data layer pulls in numpy, soundfile and yaml, and Predictor's backends torch or
    # onnxruntime.
    if name == "LabelSchema":
        from speech_emotion.data.labels import LabelSchema

        return LabelSchema
    if name == "load_dataset":
        from speech_emotion.data.dataset import load_dataset

        return load_dataset
    if name == "read_corpus":
        from speech_emotion.data.corpora import read_corpus

        return read_corpus
    if name == "Predictor":
        from speech_emotion.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'speech_emotion' has no attribute {name!r}")
