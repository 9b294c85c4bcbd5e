"""Speech encoders: a 16 kHz waveform in, pooled statistics of every layer out.

One interface covers three families:

- ``"whisper"``: the encoder of an OpenAI Whisper checkpoint, run on variable-length input
  (no padding to 30 s; the learned position table is cut to the frames used).
- ``"ssl"``: a Hugging Face self-supervised speech model (wav2vec 2.0, HuBERT, WavLM,
  data2vec-audio).
- ``"egemaps"``: the openSMILE eGeMAPSv02 functionals (88 values per clip).

:func:`load_encoder` picks the family from the model's config. Every encoder has the same
attributes (``reference``, ``family``, ``fingerprint``, ``n_layers``, ``dim``,
``sampling_rate``, ``preprocessing``) and methods (``features``, and ``frames`` for the
neural families); Whisper and SSL encoders are also :class:`FinetunableEncoder`.

Pooled features of one clip never depend on the other clips of a batch: padded positions are
masked out of attention and pooling (Whisper, layer-norm SSL models), and models whose first
layers normalise over time (SSL models with ``feat_extract_norm == "group"``) are only ever
batched with clips of exactly the same length.

Modules, one per job: ``base`` (the frozen :class:`Encoder` API), ``finetunable`` (the
fine-tuning API), ``pooling``, ``fingerprint``, ``whisper``, ``ssl``, ``egemaps``, ``loading``
and ``onnx`` (:class:`OnnxEncoder`, the ONNX Runtime path). ``base`` and ``onnx`` import no
torch; the torch-based names are imported from this package on first use.
"""

from speech_emotion.features.encoders.base import Encoder
from speech_emotion.features.encoders.onnx import OnnxEncoder

__all__ = [
    "SSL_MODEL_TYPES",
    "EgemapsEncoder",
    "Encoder",
    "FinetunableEncoder",
    "OnnxEncoder",
    "SSLEncoder",
    "WhisperEncoder",
    "check_finetunable",
    "load_encoder",
    "pool_frames",
]

# Names whose modules import torch: imported on first use, so that the ONNX path
# (features.encoders.onnx) and the feature store run where torch is not installed.
_TORCH_NAMES = {
    "SSL_MODEL_TYPES": "speech_emotion.features.encoders.ssl",
    "EgemapsEncoder": "speech_emotion.features.encoders.egemaps",
    "FinetunableEncoder": "speech_emotion.features.encoders.finetunable",
    "SSLEncoder": "speech_emotion.features.encoders.ssl",
    "WhisperEncoder": "speech_emotion.features.encoders.whisper",
    "check_finetunable": "speech_emotion.features.encoders.finetunable",
    "load_encoder": "speech_emotion.features.encoders.loading",
    "pool_frames": "speech_emotion.features.encoders.pooling",
}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'speech_emotion.features.encoders' has no attribute {name!r}")
