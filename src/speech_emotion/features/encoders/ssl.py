"""Hugging Face self-supervised speech models: wav2vec 2.0, HuBERT, WavLM, data2vec-audio."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.encoders.finetunable import FinetunableEncoder
from speech_emotion.features.encoders.transformers_logging import quiet_transformers
from speech_emotion.features.signal import ssl_frames, ssl_min_samples

SSL_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
"""Hugging Face ``model_type`` values loaded as self-supervised (``"ssl"``) encoders."""

# SSL model types whose outputs change when a clip is padded, even with an attention mask.
_NO_PADDING_MODEL_TYPES = frozenset({"data2vec-audio"})


class SSLEncoder(FinetunableEncoder):
    """A Hugging Face self-supervised speech model (wav2vec 2.0, HuBERT, WavLM, data2vec-audio).

    Each clip is normalised by the model's feature extractor on its own (so normalisation
    never sees padding). Models whose convolutional front end uses layer norm
    (``feat_extract_norm == "layer"``, e.g. wav2vec2-large-lv60, hubert-large, wavlm-large)
    batch clips of different lengths with an attention mask. Two kinds of model would change
    their output when a clip is padded, mask or not, so they batch only clips of exactly equal
    length (in practice, one clip at a time): group norm in the front end
    (``feat_extract_norm == "group"``, e.g. wav2vec2-base, hubert-base) normalises over time,
    padding included, and data2vec-audio's stacked positional convolutions carry padded frames
    into the last valid ones. ``preprocessing["padding"]`` says which applies.

    Use :func:`~speech_emotion.features.encoders.load_encoder` to build one.
    """

    family = "ssl"

    def __init__(
        self,
        *,
        reference: str,
        model: torch.nn.Module,
        feature_extractor: Any,
        fingerprint: str,
        device: torch.device,
        precision: str = "fp32",
    ):
        config = model.config
        super().__init__(
            reference=reference,
            model=model,
            feature_extractor=feature_extractor,
            fingerprint=fingerprint,
            device=device,
            precision=precision,
            hidden_size=int(config.hidden_size),
            n_layers=int(config.num_hidden_layers) + 1,
        )
        self._feat_extract_norm = str(getattr(config, "feat_extract_norm", "layer"))
        self._model_type = str(config.model_type)
        self.min_samples = ssl_min_samples(config.conv_kernel, config.conv_stride)
        self.samples_per_frame = int(np.prod([int(stride) for stride in config.conv_stride]))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate": SAMPLING_RATE,
            "do_normalize": bool(getattr(self._extractor, "do_normalize", False)),
            "padding": "masked" if self.can_pad else "none",
            "max_window_s": self.max_window_s,
            "pooling": "mean+std",
            "std_ddof": 0,
            "implementation": "ssl/1",
            **self._precision_fields(),
        }

    @property
    def can_pad(self) -> bool:
        # Group norm normalises the first convolution over time, padding included.
        # data2vec-audio's positional embedding stacks several convolutions, so padded frames
        # (zero only before the first) leak into the last valid frames.
        return self._feat_extract_norm != "group" and self._model_type not in _NO_PADDING_MODEL_TYPES

    @torch.inference_mode()
    def _forward_segments(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        with self.precision_context():
            stacked, n_frames = self._hidden_states(segments)
        array = stacked.float().cpu().numpy()
        return [array[i, :, : int(n_frames[i])] for i in range(len(segments))]

    def _segment_states(self, segments: list[np.ndarray]) -> list[torch.Tensor]:
        stacked, n_frames = self._hidden_states(segments)
        return [stacked[i, :, : int(n_frames[i])] for i in range(len(segments))]

    def _hidden_states(self, segments: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(batch, n_layers, frames, hidden)`` and valid frames per clip (differentiable)."""
        values = [
            np.asarray(
                self._extractor(segment, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_values"][0],
                dtype=np.float32,
            )
            for segment in segments
        ]
        lengths = torch.tensor([v.shape[0] for v in values], device=self.device)
        max_len = int(lengths.max())
        batch = torch.zeros(len(values), max_len, device=self.device)
        for i, v in enumerate(values):
            batch[i, : v.shape[0]] = torch.from_numpy(v)
        attention_mask = None
        if bool((lengths < max_len).any()):
            if not self.can_pad:  # _iter_frames never builds such a batch
                raise RuntimeError("group-norm models must not be batched with padding")
            attention_mask = (torch.arange(max_len, device=self.device)[None, :] < lengths[:, None]).long()
        with warnings.catch_warnings():
            # WavLM passes a float attention bias and a bool padding mask to torch's attention.
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            outputs = self._model(batch, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(outputs.hidden_states, dim=1), self.frame_lengths(lengths).cpu()

    # WavLM's first layer computes a relative position bias that the layers above reuse: running
    # the top layers alone would need it too, so WavLM fine-tunes through the whole encoder.
    @property
    def can_run_top(self) -> bool:  # type: ignore[override]
        return self._model_type in ("wav2vec2", "hubert", "data2vec-audio")

    def _segment_frames(self, n_samples: int) -> int:
        config = self._model.config
        return ssl_frames(n_samples, config.conv_kernel, config.conv_stride)

    def _run_top(self, hidden: torch.Tensor, n_frames: torch.Tensor, top: int) -> torch.Tensor:
        # As transformers' encoder runs its layers: a bidirectional mask over valid frames. The
        # hidden states it returns never include the final layer norm of pre-norm models.
        mask = None
        if bool((n_frames < hidden.shape[1]).any()):
            from transformers.masking_utils import create_bidirectional_mask

            valid = torch.arange(hidden.shape[1], device=self.device)[None, :] < n_frames[:, None]
            mask = create_bidirectional_mask(config=self._model.config, inputs_embeds=hidden, attention_mask=valid)
        states = []
        for layer in self._model.encoder.layers[-top:]:
            hidden = layer(hidden, attention_mask=mask)
            states.append(hidden)
        return torch.stack(states, dim=1)

    @property
    def n_transformer_layers(self) -> int:
        return len(self._model.encoder.layers)

    # A key bias adds the same q·b to every attention score of a query; softmax cancels it.
    no_gradient = ("attention.k_proj.bias",)

    def _top_layers(self, n: int) -> list[torch.nn.Module]:
        # Only the layers: the hidden states transformers returns never pass through the
        # encoder's final layer norm of pre-norm ("stable layer norm") models, and post-norm
        # models apply it before the first layer, where it stays frozen.
        return list(self._model.encoder.layers[-n:])

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    @property
    def feature_extractor(self) -> Any:
        return self._extractor

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model (``model.safetensors`` + ``config.json``) and ``preprocessor_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():  # no "Writing model shards" bar
            self._model.save_pretrained(folder)
            self._extractor.save_pretrained(folder)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of hidden state per input length in samples (a tensor, so that exports can trace it).

        Hidden states come before any adapter, so none is counted.
        """
        lengths_of = self._model._get_feat_extract_output_lengths
        if "add_adapter" in inspect.signature(lengths_of).parameters:
            return lengths_of(lengths, add_adapter=False)
        return lengths_of(lengths)
