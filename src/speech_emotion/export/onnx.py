"""``ser export --format onnx``: a trained model as a folder that ONNX Runtime runs without torch.

The folder holds:

- ``encoder.onnx``: the frozen encoder with pooling. Whisper: ``log_mel`` (batch, n_mels,
  frames) float32 and ``n_frames`` (batch) int64 → ``features`` (batch, n_layers, 2·hidden):
  per layer the mean and the standard deviation (ddof 0) over the clip's frames. The frame
  axis is dynamic (any length up to 30 s); shorter clips of a batch are zero-padded and masked,
  exactly as the PyTorch encoder does. SSL models (wav2vec 2.0 family): ``input_values``
  (batch, samples) [and ``n_samples`` (batch) for models that may be padded] → ``features``.
- ``head.onnx``: ``features`` → ``probabilities`` (batch, K), the bundle's calibration
  temperature applied.
- ``mel_filters.npy`` (Whisper): the mel filter bank for the numpy log-mel spectrogram.
- ``model.json``: the bundle's metadata plus an ``onnx`` section (backend, files with sha256,
  quantization, opset, inputs).

``Predictor.from_pretrained(FOLDER)`` runs it with onnxruntime, numpy, soundfile and soxr
alone. ``quantize="int8"`` quantizes the encoder's weights to int8 with ONNX Runtime's
dynamic quantization (the head stays fp32).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.atomic import replace_folder, write_json
from speech_emotion.errors import BundleError
from speech_emotion.features.devices import check_device
from speech_emotion.features.encoders.onnx import ENCODER_FILE, MEL_FILTERS_FILE
from speech_emotion.inference.backends import HEAD_FILE, file_sha256
from speech_emotion.model.metadata import META_FILE, ONNX_FORMAT, ONNX_VERSION

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the exported graphs."""

QUANTIZATIONS = (None, "int8")
"""Values of ``quantize``."""

FP32_TOLERANCE = 1e-4
"""Largest accepted difference between fp32 ONNX and PyTorch probabilities on the export check."""


def export_onnx(
    model: str | Path,
    out: str | Path,
    *,
    quantize: str | None = None,
    encoder: str | None = None,
    device: str = "auto",
) -> dict:
    """Export a trained model (encoder + head) to an ONNX Runtime folder.

    The export is checked before it is written: probabilities of a few synthetic signals
    through ONNX Runtime are compared with PyTorch's (fp32 must agree within 1e-4).

    Args:
        model: a run folder made by ``ser train`` or its ``model/`` folder.
        out: the folder to write (replaced if it exists).
        quantize: ``None`` for fp32, ``"int8"`` for dynamic int8 quantization of the encoder.
        encoder: where the model's encoder is now, if it moved.
        device: ``"auto"`` or ``"cpu"``: the model is traced on the CPU (an ONNX file holds no
            device; run the export on a GPU with ``Predictor.from_pretrained(out, device="cuda")``
            and onnxruntime-gpu); ``cuda`` is refused rather than ignored.

    Returns:
        A summary: family, files and sizes, quantization, opset, and the check's largest
        probability difference from PyTorch.

    Raises:
        ValueError: an unknown ``quantize``, or a CUDA ``device``.
        BundleError: the model cannot be exported (eGeMAPS encoder, speaker-normalised head,
            features computed in bf16), or the fp32 export disagrees with PyTorch.

    Example:
        >>> export_onnx("./no/such/run", "/tmp/x", quantize="int4")
        Traceback (most recent call last):
        ...
        ValueError: quantize: expected None (fp32) or 'int8', got 'int4'
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize: expected None (fp32) or 'int8', got {quantize!r}")
    if check_device(device) not in ("auto", "cpu"):
        raise ValueError(
            f"device {device!r}: an ONNX export is traced on the CPU (the file holds no device); pass --device cpu or "
            "auto, and run the export on a GPU with onnxruntime-gpu (`ser predict OUT FILES --device cuda`)"
        )
    import torch

    from speech_emotion.export.exportable import check_exportable
    from speech_emotion.inference.predictor import Predictor

    started = time.perf_counter()
    out = Path(out)
    predictor = Predictor.from_pretrained(model, encoder=encoder, backend="torch", device="cpu")
    check_exportable(predictor, target="ONNX")
    bundle, torch_encoder = predictor.backend.bundle, predictor.encoder
    family = bundle.meta.encoder.family

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            if family == "whisper":
                input_info = _export_whisper(torch_encoder, staging / ENCODER_FILE)
                np.save(staging / MEL_FILTERS_FILE, torch_encoder.mel_filters.astype(np.float32), allow_pickle=False)
            else:
                input_info = _export_ssl(torch_encoder, staging / ENCODER_FILE)
            _export_head(bundle.head, bundle.temperature, staging / HEAD_FILE)
        if quantize == "int8":
            _quantize_int8(staging / ENCODER_FILE)

        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        onnx = {
            "format": ONNX_FORMAT,
            "version": ONNX_VERSION,
            "backend": "onnxruntime",
            "opset": OPSET,
            "quantization": quantize or "none",
            "input": input_info,
            "batch_seconds": 30.0,
            "files": {
                name: {"sha256": file_sha256(staging / name), "bytes": (staging / name).stat().st_size}
                for name in files
            },
            "source": str(bundle.path.resolve()),
        }
        meta = bundle.meta.replace(kind="onnx", onnx=onnx)
        write_json(staging / META_FILE, meta.to_dict())

        check = _check_against_torch(staging, predictor)
        if quantize is None and check > FP32_TOLERANCE:
            raise BundleError(
                f"{bundle.path}: the ONNX export's probabilities differ from PyTorch's by up to {check:.2e} "
                f"(> {FP32_TOLERANCE:g}) on synthetic signals; this is a bug in the exporter, please report it"
            )
        replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "family": family,
        "quantization": quantize or "none (fp32)",
        "opset": OPSET,
        "files": ", ".join(
            f"{name} ({onnx['files'][name]['bytes'] / 1e6:.1f} MB)" for name in files if name != META_FILE
        ),
        "max_abs_diff_vs_torch": f"{check:.2e}",
        "export_s": round(time.perf_counter() - started, 1),
        "run_with": f"Predictor.from_pretrained({str(out)!r}) or `ser predict {out} FILES…` (onnxruntime, no torch)",
    }


def _whisper_pooled(torch_encoder: Any):
    """A torch module: (log-mel batch, mel frames per clip) → pooled features, as ``WhisperEncoder``."""
    import torch

    class WhisperPooled(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, log_mel: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
            encoder = self.encoder
            max_frames = log_mel.shape[2]
            valid = torch.arange(max_frames)[None, :] < n_frames[:, None]
            # the first convolution's output is zeroed past each clip's end (as in WhisperEncoder)
            hidden = torch.nn.functional.gelu(encoder.conv1(log_mel)) * valid[:, None, :].to(log_mel.dtype)
            hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
            n_positions = hidden.shape[1]
            hidden = hidden + encoder.embed_positions.weight[:n_positions]
            lengths = torch.div(n_frames - 1, encoder.conv2.stride[0], rounding_mode="floor") + 1
            positions = torch.arange(n_positions)[None, :] < lengths[:, None]
            mask = torch.zeros(positions.shape, dtype=hidden.dtype).masked_fill(
                ~positions, torch.finfo(hidden.dtype).min
            )
            mask = mask[:, None, None, :]
            states = [hidden]
            for layer in encoder.layers:
                hidden = layer(hidden, mask)
                states.append(hidden)
            states[-1] = encoder.layer_norm(hidden)
            return _masked_mean_std(torch.stack(states, dim=1), positions, lengths)

    return WhisperPooled(torch_encoder.module).eval()


def _masked_mean_std(stacked, valid, lengths):
    """(batch, layers, frames, hidden) → (batch, layers, 2·hidden): mean ‖ std (ddof 0) over valid frames."""
    import torch

    weights = valid.to(stacked.dtype)[:, None, :, None]
    count = lengths.to(stacked.dtype)[:, None, None]
    mean = (stacked * weights).sum(dim=2) / count
    centred = (stacked - mean[:, :, None, :]) * weights
    std = ((centred * centred).sum(dim=2) / count).sqrt()
    return torch.cat([mean, std], dim=2)


def _export_whisper(torch_encoder: Any, path: Path) -> dict:
    import torch

    module = _whisper_pooled(torch_encoder)
    n_mels = int(torch_encoder.preprocessing["n_mels"])
    example = (torch.randn(2, n_mels, 300), torch.tensor([300, 240], dtype=torch.int64))
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=["log_mel", "n_frames"],
        output_names=["features"],
        dynamic_axes={"log_mel": {0: "batch", 2: "frames"}, "n_frames": {0: "batch"}, "features": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return {"type": "log-mel", "names": ["log_mel", "n_frames"], "n_mels": n_mels}


def _export_ssl(torch_encoder: Any, path: Path) -> dict:
    import torch

    model = torch_encoder.module
    config = model.config
    masked = bool(torch_encoder.can_pad)

    class SSLPooled(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, input_values: torch.Tensor, n_samples: torch.Tensor | None = None) -> torch.Tensor:
            if n_samples is None:
                n_samples = torch.full((input_values.shape[0],), input_values.shape[1], dtype=torch.int64)
                attention_mask = None
            else:
                attention_mask = (torch.arange(input_values.shape[1])[None, :] < n_samples[:, None]).long()
            outputs = self.model(input_values, attention_mask=attention_mask, output_hidden_states=True)
            stacked = torch.stack(outputs.hidden_states, dim=1)
            lengths = torch_encoder.frame_lengths(n_samples)
            valid = torch.arange(stacked.shape[2])[None, :] < lengths[:, None]
            return _masked_mean_std(stacked, valid, lengths)

    module = SSLPooled(model).eval()
    if masked:
        example = (torch.randn(2, 16000), torch.tensor([16000, 12000], dtype=torch.int64))
        names = ["input_values", "n_samples"]
        axes = {"input_values": {0: "batch", 1: "samples"}, "n_samples": {0: "batch"}, "features": {0: "batch"}}
    else:
        example = (torch.randn(1, 16000),)
        names = ["input_values"]
        axes = {"input_values": {0: "batch", 1: "samples"}, "features": {0: "batch"}}
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=names,
        output_names=["features"],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )
    return {
        "type": "waveform",
        "names": names,
        "masked": masked,
        "do_normalize": bool(torch_encoder.preprocessing["do_normalize"]),
        "conv_kernel": [int(k) for k in config.conv_kernel],
        "conv_stride": [int(s) for s in config.conv_stride],
    }


def _export_head(head: Any, temperature: float, path: Path) -> None:
    import torch

    class Calibrated(torch.nn.Module):
        def __init__(self, head: torch.nn.Module):
            super().__init__()
            self.head = head

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.head(features) / temperature, dim=1)

    module = Calibrated(head).eval()
    example = torch.zeros(2, head.config.n_layers, head.config.dim)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["features"],
        output_names=["probabilities"],
        dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )


def _quantize_int8(path: Path) -> None:
    """Dynamic int8 quantization, per output channel, of the weights of MatMul/Gemm nodes.

    Matrix products of two activations (attention scores and their weighted sum) stay fp32:
    they have no weights to shrink, and quantizing both operands on the fly costs accuracy.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    activation_products = [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]
    quantized = path.with_name(path.stem + ".int8.onnx")
    root = logging.getLogger()
    # onnxruntime's generic pre-processing advice, and a line per activation it leaves unquantized (by design here)
    advice = _DropMessage("Please consider to run pre-processing before quantization", "Quantization parameters for")
    root.addFilter(advice)
    try:
        quantize_dynamic(
            str(path),
            str(quantized),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=activation_products,
        )
    finally:
        root.removeFilter(advice)
    quantized.replace(path)


class _DropMessage(logging.Filter):
    """Drops log records that start with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _check_against_torch(folder: Path, predictor: Any) -> float:
    """Largest |p_onnx − p_torch| over a few synthetic signals of different lengths (one batch)."""
    from speech_emotion.inference.backends import OnnxBackend

    rng = np.random.default_rng(0)
    signals = []
    for seconds, freq in ((0.6, 180.0), (1.7, 240.0), (3.1, 320.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        signals.append((0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32))
    expected = predictor.predict_features(np.stack(predictor.encoder.features(signals)))
    backend = OnnxBackend(folder, device="cpu")
    got = backend.predict_features(np.stack(backend.encoder.features(signals)))
    return float(np.abs(got - expected).max())
