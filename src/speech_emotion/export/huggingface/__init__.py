"""Hugging Face export: a folder that ``transformers.pipeline("audio-classification")`` loads.

The folder holds a stock transformers class (no custom code, no ``trust_remote_code``):
``config.json`` with ``id2label``/``label2id`` in the schema's index order,
``model.safetensors`` (encoder and head), ``preprocessor_config.json`` (the encoder's feature
extractor), a model card ``README.md`` and ``speech_emotion_export.json`` (the figures the card
quotes, machine-readable).

Stock heads (``Wav2Vec2ForSequenceClassification`` and its HuBERT / WavLM / data2vec-audio
siblings, ``WhisperForAudioClassification``) compute::

    logits = classifier(pool_t(projector(sum_l softmax(layer_weights)_l * hidden[l, t])))

with only linear layers and a mean (no std) over frames. How a speech_emotion head gets there
depends on the encoder family:

- wav2vec 2.0 family: a head trained with ``TrainConfig(hidden=0, hf_compatible=True)``
  (``ser train --hidden 0 --hf-compatible``) is copied exactly (:func:`hf_head_weights`):
  its per-layer scales are one shared vector times one factor per layer, so the standardisation
  folds into the layer weights and the projector, and the calibration temperature into the
  classifier. The pipeline encodes a clip exactly as ``ser predict`` does (one clip, unpadded),
  so probabilities agree to float precision (checked at export). Other heads cannot be
  represented and get a :class:`~speech_emotion.errors.BundleError` naming what to change.
- Whisper: the stock class pads every clip to 30 s and averages all 1,500 frames, unmasked,
  so no head trained on unpadded features transfers. The export refits a linear head on the
  run's training audio encoded exactly as the pipeline will encode it (30 s padding, all
  frames), early-stopped on the run's validation speakers, and then copies it exactly.

Modules, one per job: ``head`` (stock head weights, the stock model), ``run_data`` (the run's
corpus and parts), ``whisper_refit`` (pipeline-encoded features and the refit), ``check``
(``pipeline()`` against ``ser predict``), ``card`` (the model card) and ``export``
(:func:`export_huggingface`).
"""

from speech_emotion.export.huggingface.card import model_card
from speech_emotion.export.huggingface.check import MAX_DIFF
from speech_emotion.export.huggingface.check import MAX_PIPELINE_SECONDS
from speech_emotion.export.huggingface.export import CARD
from speech_emotion.export.huggingface.export import EXPORT_INFO
from speech_emotion.export.huggingface.export import export_huggingface
from speech_emotion.export.huggingface.head import RETRAIN_HINT
from speech_emotion.export.huggingface.head import hf_head_weights
from speech_emotion.export.huggingface.whisper_refit import WHISPER_BATCH
from speech_emotion.export.huggingface.whisper_refit import PipelineWhisperEncoder

__all__ = [
    "CARD",
    "EXPORT_INFO",
    "MAX_DIFF",
    "MAX_PIPELINE_SECONDS",
    "RETRAIN_HINT",
    "WHISPER_BATCH",
    "PipelineWhisperEncoder",
    "export_huggingface",
    "hf_head_weights",
    "model_card",
]
