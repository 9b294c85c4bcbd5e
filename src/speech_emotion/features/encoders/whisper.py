"""Whisper encoders on variable-length input (no padding to 30 s)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speech_emotion.data.audio import SAMPLING_RATE
from speech_emotion.features.encoders.finetunable import FinetunableEncoder


class WhisperEncoder(FinetunableEncoder):
    """The encoder of a Whisper checkpoint, run on variable-length input.

    transformers' own Whisper encoder only accepts 30 s of log-mel frames. Here every clip is
    encoded at its own length: the log-mel spectrogram covers the clip only (its values equal
    those of the 30 s-padded spectrogram on the clip's frames), and the learned absolute
    position table is cut to the frames used. Clips of different lengths share a batch: mel
    frames are zero-padded (as the convolutions' own padding), the first convolution's output is
    zeroed past each clip's end, and an additive attention mask hides padded positions. Inputs
    longer than 30 s are encoded in equal windows of at most 30 s.

    Hidden states, as transformers returns them: the embedding output (convolutions plus
    positions), the output of each layer, the last one after the final layer norm.

    Use :func:`~speech_emotion.features.encoders.load_encoder` to build one.
    """

    family = "whisper"

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
            hidden_size=int(config.d_model),
            n_layers=int(config.encoder_layers) + 1,
        )
        self._n_fft = int(feature_extractor.n_fft)
        self._hop_length = int(feature_extractor.hop_length)
        self._n_mels = int(feature_extractor.feature_size)
        self._n_positions = int(model.embed_positions.weight.shape[0])
        strides = model.conv1.stride[0] * model.conv2.stride[0]
        self.max_window_s = min(30.0, self._n_positions * strides * self._hop_length / SAMPLING_RATE)
        self.samples_per_frame = strides * self._hop_length
        mel_filters = np.asarray(feature_extractor.mel_filters)
        self._mel_filters = torch.as_tensor(mel_filters, dtype=torch.float32, device=device)
        self._window = torch.hann_window(self._n_fft, device=device)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "sampling_rate": SAMPLING_RATE,
            "input": "log-mel",
            "n_fft": self._n_fft,
            "hop_length": self._hop_length,
            "n_mels": self._n_mels,
            # no padding to a fixed length; padding inside a batch is masked out
            "padding": "none",
            "max_window_s": self.max_window_s,
            "pooling": "mean+std",
            "std_ddof": 0,
            "implementation": "whisper-variable-length/1",
            **self._precision_fields(),
        }

    def log_mel(self, signal: np.ndarray) -> torch.Tensor:
        """Log-mel spectrogram of one clip, without padding to 30 s.

        Equal to the first ``ceil(len(signal) / hop_length)`` frames of
        ``WhisperFeatureExtractor`` output for the same clip padded to 30 s: the clip is
        followed by zeros (not reflected) and the dynamic-range floor comes from the clip's
        frames, exactly as in the padded computation. (The one exception: the last frame of a
        window of exactly 30 s, where the padded computation has no zeros left and reflects.)

        Args:
            signal: 1-D float32 array at 16 kHz, at most 30 s.

        Returns:
            float32 tensor of shape ``(n_mels, ceil(len(signal) / hop_length))``.
        """
        n = int(signal.shape[0])
        waveform = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)).to(self.device)
        waveform = torch.nn.functional.pad(waveform, (0, self._n_fft))
        stft = torch.stft(waveform, self._n_fft, self._hop_length, window=self._window, return_complex=True)
        # Frames up to here see only the clip and trailing zeros, as in the 30 s-padded input;
        # later frames of the padded input are pure silence and never set the maximum.
        n_reference = (n + self._n_fft // 2) // self._hop_length + 1
        magnitudes = (stft[:, :n_reference].abs() ** 2).contiguous()
        log_spec = torch.clamp(self._mel_filters.T @ magnitudes, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        log_spec = (log_spec + 4.0) / 4.0
        return log_spec[:, : math.ceil(n / self._hop_length)]

    @torch.inference_mode()
    def _forward_segments(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        mels = [self.log_mel(segment) for segment in segments]
        return self._encode_mels(mels)

    @torch.inference_mode()
    def _encode_mels(self, mels: list[torch.Tensor]) -> list[np.ndarray]:
        """Run the encoder on log-mel spectrograms of different lengths (one batch)."""
        with self.precision_context():
            stacked, lengths = self._hidden_states(mels)
        array = stacked.float().cpu().numpy()  # (batch, layers, positions, hidden)
        return [array[i, :, : int(lengths[i])] for i in range(len(mels))]

    def _segment_states(self, segments: list[np.ndarray]) -> list[torch.Tensor]:
        stacked, lengths = self._hidden_states([self.log_mel(segment) for segment in segments])
        return [stacked[i, :, : int(lengths[i])] for i in range(len(segments))]

    def _hidden_states(self, mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(batch, n_layers, positions, hidden)`` and valid positions per clip.

        Differentiable: run it under ``inference_mode`` (as :meth:`_encode_mels` does) when
        no gradient is wanted.
        """
        encoder = self._model
        n_mel_frames = torch.tensor([mel.shape[1] for mel in mels], device=self.device)
        max_frames = int(n_mel_frames.max())
        batch = torch.zeros(len(mels), self._n_mels, max_frames, device=self.device)
        for i, mel in enumerate(mels):
            batch[i, :, : mel.shape[1]] = mel
        padded = bool((n_mel_frames < max_frames).any())

        hidden = torch.nn.functional.gelu(encoder.conv1(batch))
        if padded:
            valid = torch.arange(max_frames, device=self.device)[None, :] < n_mel_frames[:, None]
            hidden = hidden * valid[:, None, :]
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        n_positions = hidden.shape[1]
        hidden = hidden + encoder.embed_positions.weight[:n_positions]
        lengths = (n_mel_frames - 1) // encoder.conv2.stride[0] + 1

        mask = self._attention_mask(lengths, n_positions, hidden.dtype) if padded else None

        states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, mask)
            states.append(hidden)
        states[-1] = encoder.layer_norm(hidden)
        return torch.stack(states, dim=1), lengths

    def _attention_mask(self, lengths: torch.Tensor, n_positions: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``(batch, 1, 1, positions)`` hiding positions at or past each clip's length."""
        valid = torch.arange(n_positions, device=self.device)[None, :] < lengths[:, None]
        mask = torch.zeros(len(lengths), 1, 1, n_positions, dtype=dtype, device=self.device)
        return mask.masked_fill_(~valid[:, None, None, :], torch.finfo(dtype).min)

    can_run_top = True

    def _segment_frames(self, n_samples: int) -> int:
        n_mel_frames = math.ceil(n_samples / self._hop_length)
        return (n_mel_frames - 1) // int(self._model.conv2.stride[0]) + 1

    def _run_top(self, hidden: torch.Tensor, n_frames: torch.Tensor, top: int) -> torch.Tensor:
        mask = None
        if bool((n_frames < hidden.shape[1]).any()):
            mask = self._attention_mask(n_frames, hidden.shape[1], hidden.dtype)
        states = []
        for layer in self._model.layers[-top:]:
            hidden = layer(hidden, mask)
            states.append(hidden)
        states[-1] = self._model.layer_norm(hidden)
        return torch.stack(states, dim=1)

    @property
    def n_transformer_layers(self) -> int:
        return len(self._model.layers)

    def _top_layers(self, n: int) -> list[torch.nn.Module]:
        # The final layer norm acts on the last layer's output only: it belongs to the top.
        return [*self._model.layers[-n:], self._model.layer_norm]

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    @property
    def feature_extractor(self) -> Any:
        return self._extractor

    @property
    def mel_filters(self) -> np.ndarray:
        """The feature extractor's mel filter bank as used here: float32 ``(n_fft // 2 + 1, n_mels)``."""
        return self._mel_filters.cpu().numpy().copy()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json``, ``preprocessor_config.json`` and ``model.safetensors``.

        The weights are stored as ``encoder.*`` tensors, the layout of an encoder-only
        Whisper checkpoint, which :func:`~speech_emotion.features.encoders.load_encoder` reads back.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._model.config.save_pretrained(folder)
        self._extractor.save_pretrained(folder)
        tensors = {f"encoder.{k}": v.detach().to("cpu").contiguous() for k, v in self._model.state_dict().items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
