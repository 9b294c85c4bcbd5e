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

Example:
    >>> from speech_emotion.model.head import EmotionHead, HeadConfig
    >>> head = EmotionHead(HeadConfig(n_layers=3, dim=8, n_classes=2, hidden=0, hf_compatible=True))
    >>> sorted(hf_head_weights(head))
    ['classifier.bias', 'classifier.weight', 'layer_weights', 'projector.bias', 'projector.weight']
    >>> hf_head_weights(EmotionHead(HeadConfig(n_layers=3, dim=8, n_classes=2, hidden=16)))
    Traceback (most recent call last):
    ...
    speech_emotion.errors.BundleError: the head has a hidden layer (hidden=16) ...
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from speech_emotion.atomic import write_json
from speech_emotion.data.audio import SAMPLING_RATE, load_audio
from speech_emotion.data.dataset import load_dataset
from speech_emotion.errors import BundleError
from speech_emotion.features.store import FeatureStore, encode_dataset, extract_features
from speech_emotion.inference.predictor import Predictor
from speech_emotion.model.head import EmotionHead, predict_logits
from speech_emotion.model.metrics import classification_metrics
from speech_emotion.progress import Progress, no_progress
from speech_emotion.training.config import RunConfig, TrainConfig
from speech_emotion.training.loop import fit_head
from speech_emotion.version import __version__

log = logging.getLogger(__name__)

EXPORT_INFO = "speech_emotion_export.json"
CARD = "README.md"
MAX_DIFF = 1e-4
"""Largest |Δp| accepted between the exported pipeline and ``ser predict`` for an exact copy."""
MAX_PIPELINE_SECONDS = 30.0
"""Longer clips are windowed by ``ser predict`` but encoded whole (SSL) or cut (Whisper) by the pipeline."""
WHISPER_BATCH = 4
"""30 s-padded clips per forward pass when encoding for the Whisper refit and check."""

RETRAIN_HINT = (
    "retrain with TrainConfig(hidden=0, hf_compatible=True) (`ser train ... --hidden 0 --hf-compatible`): a linear "
    "head "
    "on mean features with a standardisation shared across layers, which a stock transformers head computes exactly"
)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' own progress bars and load reports (the CLI shows its own)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# The head: an EmotionHead as stock weights
# ---------------------------------------------------------------------------------------------


def hf_head_weights(head: EmotionHead, *, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """The weights of a stock transformers head that computes ``head``'s logits / ``temperature``.

    The stock head sees mean-pooled hidden states ``mu[l]`` (per layer, width H) and computes
    ``classifier(projector(sum_l v_l mu[l]))`` with ``v = softmax(layer_weights)``. Our
    ``hf_compatible`` head computes ``W sum_l w_l (mu[l] - m[l]) / (a_l * s) + b`` with layer
    factors ``a`` and a shared scale ``s``; with ``u_l = w_l / a_l``, ``v = u / sum(u)``,
    ``projector = diag(sum(u) / s)`` with bias ``-sum_l w_l m[l] / (a_l s)``, and
    ``classifier = (W, b) / temperature``, the two are equal.

    Args:
        head: a trained head with ``hidden=0`` and ``hf_compatible=True``.
        temperature: softmax temperature of the bundle (folded into the classifier).

    Returns:
        float32 tensors ``layer_weights`` (L,), ``projector.weight`` (H, H), ``projector.bias``
        (H,), ``classifier.weight`` (K, H), ``classifier.bias`` (K,), where H is half the
        head's feature width (the mean half).

    Raises:
        BundleError: the head has a hidden layer, uses std features or per-layer scales, or
            its scales are not one shared vector times a factor per layer.
    """
    config = head.config
    if config.hidden:
        raise BundleError(
            f"the head has a hidden layer (hidden={config.hidden}) and a stock transformers head is linear; "
            f"{RETRAIN_HINT}"
        )
    if getattr(config, "mixing", "softmax") != "softmax":
        raise BundleError(
            f"the head concatenates the encoder layers (mixing={config.mixing!r}) and a stock transformers head sums "
            "them "
            f"with softmax weights; {RETRAIN_HINT}"
        )
    if not config.hf_compatible:
        raise BundleError(
            "the head reads mean+std pooled features with a separate standardisation per layer; a stock transformers "
            "head "
            f"pools only the mean over frames and standardises after the weighted layer sum; {RETRAIN_HINT}"
        )
    if not temperature > 0:
        raise BundleError(f"calibration temperature must be positive, got {temperature}")
    n_half = config.dim // 2
    with torch.no_grad():
        mean = head.feature_mean[:, :n_half].double()
        scale = head.feature_scale[:, :n_half].double()
        shared = scale[0]
        factors = (scale / shared).mean(dim=1)
        deviation = float(((factors[:, None] * shared - scale).abs() / scale).max())
        if deviation > 1e-4:
            raise BundleError(
                f"the head's feature scales are not one vector shared by all layers times a factor per layer (relative "
                f"deviation {deviation:.2g}); they were not fitted by an hf_compatible head; {RETRAIN_HINT}"
            )
        w = head.layer_weights().double()
        u = w / factors
        total = u.sum()
        classifier = head.classifier
        return {
            "layer_weights": torch.log(u / total).float(),
            "projector.weight": torch.diag(total / shared).float(),
            "projector.bias": (-(w[:, None] * mean / scale).sum(dim=0)).float(),
            "classifier.weight": (classifier.weight.double() / temperature).float(),
            "classifier.bias": (classifier.bias.double() / temperature).float(),
        }


def _hf_config(encoder_config: Any, classes: Sequence[str], n_hidden: int) -> Any:
    config = copy.deepcopy(encoder_config)
    config.use_weighted_layer_sum = True
    config.classifier_proj_size = n_hidden
    config.id2label = {i: name for i, name in enumerate(classes)}
    config.label2id = {name: i for i, name in enumerate(classes)}
    config.num_labels = len(classes)
    config.problem_type = "single_label_classification"
    config.dtype = "float32"
    for key in ("_name_or_path",):
        if hasattr(config, key):
            setattr(config, key, "")
    return config


def _stock_model(encoder, classes: Sequence[str]) -> torch.nn.Module:
    """A stock classification model holding ``encoder``'s exact weights (head not set yet)."""
    from transformers import AutoModelForAudioClassification

    module = encoder.module  # the frozen transformers module whose weights the fingerprint covers
    config = _hf_config(module.config, classes, encoder.hidden_size)
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config)
    config.architectures = [type(model).__name__]
    target = model.encoder if encoder.family == "whisper" else model.base_model
    try:
        target.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as error:
        raise BundleError(
            f"{encoder.reference}: the encoder's weights do not fit {type(model).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return model.eval()


def _set_head(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for name, value in weights.items():
        if state[name].shape != value.shape:
            raise BundleError(
                f"{type(model).__name__}.{name}: expected shape {tuple(state[name].shape)}, got {tuple(value.shape)}"
            )
    with torch.no_grad():
        model.layer_weights.copy_(weights["layer_weights"])
        model.projector.weight.copy_(weights["projector.weight"])
        model.projector.bias.copy_(weights["projector.bias"])
        model.classifier.weight.copy_(weights["classifier.weight"])
        model.classifier.bias.copy_(weights["classifier.bias"])


def _feature_extractor(encoder):
    from transformers import AutoFeatureExtractor

    if getattr(encoder, "feature_extractor", None) is not None:
        return encoder.feature_extractor
    try:
        return AutoFeatureExtractor.from_pretrained(encoder.reference)
    except (OSError, ValueError) as error:
        raise BundleError(
            f"{encoder.reference}: cannot load the encoder's feature extractor (preprocessor_config.json): {error}"
        ) from None


# ---------------------------------------------------------------------------------------------
# The run: data, split, figures
# ---------------------------------------------------------------------------------------------


def _run_folder(model: Path, bundle_path: Path) -> Path | None:
    for candidate in (model, bundle_path.parent):
        if (
            (candidate / "config.json").is_file()
            and (candidate / "split.json").is_file()
            and (candidate / "model").is_dir()
        ):
            return candidate
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: cannot read ({error})") from None


class _RunData:
    """The run's corpus, reloaded and split as in training (rows found by audio content hash)."""

    def __init__(self, run: Path, bundle, data: str | Path | None, progress: Progress):
        self.run = run
        self.config = RunConfig.read(run)
        self.split = _read_json(run / "split.json")
        self.results = _read_json(run / "results.json") if (run / "results.json").is_file() else {}
        sources = self.config.sources
        if data is not None:  # the corpus moved: one corpus, read as the run read it
            sources = (dataclasses.replace(sources[0], path=str(data)),)
        self.data = Path(sources[0].path)
        for source in sources:
            if not Path(source.path).exists():
                raise FileNotFoundError(
                    f"{source.path}: the corpus the run {run} was trained on is not there (from "
                    f"{run / 'config.json'}); pass data=... (--data) pointing at it"
                )
        with progress("decoding audio", None) as advance:
            self.dataset = load_dataset(
                sources,
                labels=bundle.schema,
                skip_bad=self.config.skip_bad,
                allow_single_label_speakers=True,  # checked when the run was trained
                progress=advance,
            )
        self.rows: dict[str, np.ndarray] = {}
        hashes = np.asarray(self.dataset.hashes)
        seen = set()
        for part in ("train", "val"):
            wanted = set(bundle.meta.data["audio_hashes"][part])
            rows = np.flatnonzero(np.isin(hashes, sorted(wanted)))
            missing = len(wanted - set(hashes[rows].tolist()))
            if missing:
                raise BundleError(
                    f"{self.data}: {missing} of the {len(wanted)} {part} clips of {run} are not in this corpus "
                    "(matched by audio "
                    f"content); pass data=... (--data) pointing at the corpus the run was trained on"
                )
            self.rows[part] = rows
            seen |= wanted
        test = self.split.get("parts", {}).get("test")
        if test:
            if "files" in test:
                keep = {str(Path(f)) for f in test["files"]}
                candidates = [i for i, p in enumerate(self.dataset.paths) if str(Path(p)) in keep]
            else:
                speakers = set(test["speakers"])
                candidates = [i for i, s in enumerate(self.dataset.speakers) if s in speakers]
            self.rows["test"] = np.asarray([i for i in candidates if hashes[i] not in seen], dtype=np.int64)

    def signals(self, part: str) -> list[np.ndarray]:
        return [load_audio(self.dataset.paths[i])[0] for i in self.rows[part]]

    def hashes(self, part: str) -> list[str]:
        return [self.dataset.hashes[i] for i in self.rows[part]]

    def y(self, part: str) -> np.ndarray:
        return self.dataset.y[self.rows[part]]

    def speakers(self, part: str) -> list[str]:
        return sorted({self.dataset.speakers[i] for i in self.rows[part]})


class PipelineWhisperEncoder:
    """Pooled hidden states of clips encoded exactly as the exported Whisper pipeline encodes them.

    Each clip goes through the Whisper feature extractor on its own (padded to 30 s) and through
    the stock classification model's encoder; every layer's 1,500 frames are pooled to mean and
    std (the stock head uses the mean half). Has the attributes the feature store needs, so the
    features are cached under their own key.
    """

    family = "whisper-pipeline"
    min_samples = 1

    def __init__(self, model: torch.nn.Module, extractor: Any, fingerprint: str):
        self._model = model
        self._extractor = extractor
        self.n_layers = int(model.config.encoder_layers) + 1
        self.dim = 2 * int(model.config.d_model)
        self.preprocessing = {
            "sampling_rate": SAMPLING_RATE,
            "input": "log-mel",
            "padding": "30 s (WhisperFeatureExtractor, as transformers.pipeline)",
            "pooling": "mean+std over all frames",
            "std_ddof": 0,
            "implementation": "hf-whisper-pipeline/1",
        }
        self.fingerprint = hashlib.sha256(f"{fingerprint}|{self.preprocessing['implementation']}".encode()).hexdigest()

    def inputs(self, signal: np.ndarray) -> torch.Tensor:
        """The model input the pipeline makes from one clip."""
        return self._extractor(signal, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]

    @torch.inference_mode()
    def features(
        self,
        signals: Sequence[np.ndarray],
        *,
        batch_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[np.ndarray]:
        """``(n_layers, 2 * d_model)`` float32 per clip: mean then std over the 1,500 frames."""
        pooled = []
        for start in range(0, len(signals), WHISPER_BATCH):
            batch = torch.cat(
                [self.inputs(np.asarray(s, dtype=np.float32)) for s in signals[start : start + WHISPER_BATCH]]
            )
            states = torch.stack(self._model.encoder(batch, output_hidden_states=True).hidden_states, dim=1).double()
            stats = torch.cat([states.mean(dim=2), states.std(dim=2, correction=0)], dim=2).float().numpy()
            pooled.extend(stats)
            if progress is not None:
                progress(len(stats))
        return pooled


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def export_huggingface(
    model: str | Path,
    out: str | Path,
    *,
    encoder: str | None = None,
    data: str | Path | None = None,
    evaluate: bool = True,
    store=None,
    progress: Progress = no_progress,
    device: str = "auto",
) -> dict:
    """Write a folder that ``transformers.pipeline("audio-classification", model=out)`` loads offline.

    wav2vec 2.0-family models must have an ``hf_compatible`` linear head and are copied
    exactly; Whisper models get a linear head refitted on their run's training audio encoded
    as the pipeline encodes it (so Whisper needs the run folder and its corpus). With
    ``evaluate``, the run's held-out test clips go through ``pipeline()`` and through the
    bundle (``ser predict``'s path) and the card reports both; an exact copy that disagrees
    by more than 1e-4 in any probability is an error.

    Args:
        model: a run folder made by ``ser train``, or its ``model/`` folder.
        out: folder to write; replaced when it exists (the CLI asks for ``--force`` first).
        encoder: where the encoder is, when it moved since training.
        data: the training corpus, when it moved since training (default: the run's config).
        evaluate: score the export on the run's test speakers (needs the corpus).
        store: feature store for cached features (default: ``FeatureStore()``).
        progress: progress bars (the CLI passes Rich ones).
        device: where the model's own encoder runs for the check (``auto``, ``cpu``, ``cuda``,
            ``cuda:N``); the stock model (refit and ``pipeline()`` check) runs on the CPU, as
            the exported folder's pipeline does by default.

    Returns:
        A summary: files, method, and the figures written to the card.

    Raises:
        BundleError: a head that a stock class cannot represent, an encoder family without
            a stock class (eGeMAPS), a speaker-normalised model, a model trained on bf16
            features, a run without its corpus.
        FileNotFoundError: the corpus is not where the run says (pass ``data``).
    """
    started = time.perf_counter()
    model, out = Path(model), Path(out)
    predictor = Predictor.from_pretrained(model, encoder=encoder, backend="torch", device=device)
    bundle = predictor.backend.bundle
    if predictor.precision != "fp32":
        raise BundleError(
            f"{bundle.path}: the model was trained on {predictor.precision} features, and a stock pipeline computes "
            "fp32 ones; train it with --precision fp32 to export it"
        )
    family = bundle.meta.encoder.family
    if family not in ("ssl", "whisper"):
        raise BundleError(
            f"{bundle.path}: encoder family {family!r} has no stock transformers classification class; "
            "train on a wav2vec 2.0-family or Whisper encoder to export to Hugging Face (or use --format onnx)"
        )
    if bundle.meta.speaker_norm:
        raise BundleError(
            f"{bundle.path}: the model standardises features per speaker (--speaker-norm), which a pipeline over "
            "single clips cannot do; retrain without --speaker-norm"
        )
    store = store if store is not None else FeatureStore()
    run_folder = _run_folder(model, bundle.path)
    run = None
    if family == "whisper" or evaluate:
        if run_folder is None:
            if family == "whisper":
                raise BundleError(
                    f"{model}: a Whisper export refits its head on the run's training audio, so it needs the run "
                    "folder made by "
                    "`ser train` (config.json, split.json, model/); pass that folder, not a copied bundle"
                )
            log.warning(
                "%s: no run folder beside the bundle; the export is checked on synthetic signals only", bundle.path
            )
        else:
            try:
                run = _RunData(run_folder, bundle, data, progress)
            except FileNotFoundError:
                if family == "whisper" or data is not None:
                    raise
                log.warning(
                    "%s: the run's corpus is not where config.json says; the export is checked on synthetic signals "
                    "only (pass data=... / --data to score it on the test speakers)",
                    run_folder,
                )

    classes = bundle.classes
    hf_model = _stock_model(predictor.encoder, classes)
    extractor = _feature_extractor(predictor.encoder)
    info: dict[str, Any] = {
        "format": "speech-emotion/hf-export",
        "speech_emotion": __version__,
        "source": str(bundle.path.resolve()),
        "architecture": type(hf_model).__name__,
        "family": family,
        "classes": classes,
        "encoder": {
            k: bundle.meta.encoder.to_dict().get(k) for k in ("reference", "family", "fingerprint", "n_layers")
        },
    }
    if family == "ssl":
        weights = hf_head_weights(bundle.head, temperature=bundle.temperature)
        info["method"] = "exact copy of the trained linear head (hf_compatible)"
        info["temperature"] = bundle.temperature
    else:
        weights, refit = _refit_whisper(hf_model, extractor, predictor, run, store, progress)
        info["method"] = "linear head refitted on pipeline-encoded training audio"
        info["refit"] = refit
    _set_head(hf_model, weights)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet_transformers():
            hf_model.save_pretrained(staging)
            extractor.save_pretrained(staging)
            if evaluate:
                info["check"] = _check_export(staging, predictor, run, store, progress, exact=family == "ssl")
        info["export_s"] = round(time.perf_counter() - started, 1)
        write_json(staging / EXPORT_INFO, info)
        (staging / CARD).write_text(model_card(info, bundle.meta.to_dict(), run), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return _summary(info, out)


def _refit_whisper(hf_model, extractor, predictor, run: _RunData, store, progress: Progress) -> tuple[dict, dict]:
    """Fit an hf_compatible linear head on the run's train part, early-stopped on val, pipeline-encoded."""
    pipeline_encoder = PipelineWhisperEncoder(hf_model, extractor, predictor.encoder.fingerprint)
    X = {}
    for part in ("train", "val"):
        loaders = [_loader(run.dataset.paths[i]) for i in run.rows[part]]
        with progress(f"encoding {part} clips as the pipeline does (30 s padded)", len(loaders)) as advance:
            X[part] = extract_features(pipeline_encoder, loaders, run.hashes(part), store, progress=advance)
    # The run's hyper-parameters (seed, lr, epochs, patience, alarms), as a linear hf_compatible head.
    recorded = {k: v for k, v in (predictor.meta.train or {}).items() if k in TrainConfig.__dataclass_fields__}
    recorded.update(hidden=0, hf_compatible=True, augment=(), balance="class", domain_norm="none")
    for key, plain in (("speaker_norm", False), ("mixing", "softmax")):
        if key in recorded:
            recorded[key] = plain
    config = TrainConfig(**recorded)
    classes = predictor.classes
    with progress("fitting the exported head", config.max_epochs) as advance:
        fit = fit_head(
            X["train"],
            run.y("train"),
            X["val"],
            run.y("val"),
            n_classes=len(classes),
            config=config,
            classes=classes,
            on_epoch=lambda record: advance(1),
        )
    val = classification_metrics(run.y("val"), predict_logits(fit.head, X["val"]).argmax(axis=1), classes)
    refit = {
        "n_train": int(len(X["train"])),
        "n_val": int(len(X["val"])),
        "train_speakers": run.speakers("train"),
        "val_speakers": run.speakers("val"),
        "best_epoch": fit.best_epoch,
        "config": config.to_dict(),
        "layer_weights": [round(float(w), 4) for w in fit.head.layer_weights().detach()],
        "val": {k: val[k] for k in ("accuracy", "uar", "macro_f1", "n")},
    }
    return hf_head_weights(fit.head), refit


def _loader(path: str) -> Callable[[], np.ndarray]:
    return lambda: load_audio(path)[0]


def _check_export(folder: Path, predictor, run: _RunData | None, store, progress: Progress, *, exact: bool) -> dict:
    """Run clips through ``pipeline()`` on the exported folder and through the bundle; compare."""
    from transformers import pipeline

    classes = predictor.classes
    pipe = pipeline("audio-classification", model=str(folder), device="cpu")
    if run is not None and len(run.rows.get("test", [])):
        rows = run.rows["test"]
        subset = run.dataset.subset(rows)
        signals, y = run.signals("test"), run.y("test")
        where = f"held-out test speakers {', '.join(run.speakers('test'))}"
        predicted = predictor.predict_features(
            encode_dataset(subset, predictor.encoder, store=store, progress=progress)
        )
    else:
        rng = np.random.default_rng(0)
        signals = [(0.1 * rng.standard_normal(int(s * SAMPLING_RATE))).astype(np.float32) for s in (0.7, 1.6, 3.1)]
        y, where = None, "synthetic noise (no run corpus available)"
        predicted = np.stack(
            [predictor.predict_features(np.stack(predictor.encoder.features([s])))[0] for s in signals]
        )
    through_pipeline = np.zeros_like(predicted)
    with progress("checking the export through pipeline()", len(signals)) as advance:
        for i, signal in enumerate(signals):
            for item in pipe(signal, top_k=None):
                through_pipeline[i, classes.index(item["label"])] = item["score"]
            advance(1)
    short = np.asarray([len(s) <= MAX_PIPELINE_SECONDS * SAMPLING_RATE for s in signals])
    diff = np.abs(through_pipeline - predicted)[short]
    check = {
        "clips": where,
        "n": int(len(signals)),
        "max_abs_diff": float(diff.max()) if diff.size else None,
        "same_label": float((through_pipeline.argmax(1) == predicted.argmax(1)).mean()),
    }
    if y is not None:
        for name, probabilities in (("pipeline", through_pipeline), ("ser_predict", predicted)):
            m = classification_metrics(y, probabilities.argmax(axis=1), classes)
            check[name] = {k: m[k] for k in ("accuracy", "uar", "macro_f1", "n")}
        check["accuracy_gap"] = round(check["ser_predict"]["accuracy"] - check["pipeline"]["accuracy"], 4)
    if exact and check["max_abs_diff"] is not None and check["max_abs_diff"] > MAX_DIFF:
        raise BundleError(
            f"{predictor.path}: the exported model's probabilities differ from `ser predict`'s by up to "
            f"{check['max_abs_diff']:.2g} on {where} (expected < {MAX_DIFF}); this is a bug in the export, please "
            "report it"
        )
    return check


def _summary(info: dict, out: Path) -> dict:
    summary = {"architecture": info["architecture"], "classes": ", ".join(info["classes"]), "method": info["method"]}
    check = info.get("check")
    if check:
        summary["checked on"] = f"{check['n']} clips, {check['clips']}"
        if info["family"] == "ssl" and check.get("max_abs_diff") is not None:
            summary["max |Δp| vs ser predict"] = f"{check['max_abs_diff']:.2g}"
        summary["same label as ser predict"] = f"{check['same_label']:.1%}"
        if "pipeline" in check:
            summary["accuracy via pipeline()"] = f"{check['pipeline']['accuracy']:.1%}"
            summary["accuracy via ser predict"] = f"{check['ser_predict']['accuracy']:.1%}"
    summary["model card"] = str(out / CARD)
    return summary


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _looks_like_hub_id(reference: str) -> bool:
    return (
        bool(reference)
        and not Path(reference).exists()
        and reference.count("/") == 1
        and not reference.startswith((".", "/", "~"))
    )


def model_card(info: dict, meta: dict, run: _RunData | None) -> str:
    """The export's README.md: classes, data and speakers, protocol and metrics, encoder, method, limits."""
    classes = info["classes"]
    encoder = meta["encoder"]
    data = meta.get("data", {})
    corpus = ", ".join(data.get("corpus", [])) or "unknown"
    front = [
        "---",
        "library_name: transformers",
        "pipeline_tag: audio-classification",
        "tags:",
        "- speech-emotion-recognition",
        "- speech-emotion",
    ]
    if _looks_like_hub_id(str(encoder.get("reference", ""))):
        front.append(f"base_model: {encoder['reference']}")
    front += ["---", ""]
    lines = front + [
        f"# Speech emotion recognition: {len(classes)} classes, {corpus}, {Path(str(encoder['reference'])).name} "
        "encoder",
        "",
        f"A `{info['architecture']}` exported by speech_emotion {info['speech_emotion']} (`ser export --format hf`) "
        "from the "
        f"model in `{info['source']}`. It loads with the stock transformers class: no custom code, no "
        "`trust_remote_code`.",
        "",
        "```python",
        "from transformers import pipeline",
        'classifier = pipeline("audio-classification", model="PATH/TO/THIS/FOLDER")',
        f'classifier("clip.wav", top_k=None)  # all {len(classes)} classes; or a 16 kHz mono float array',
        "```",
        "",
        "## Classes",
        "",
        "| index | label |",
        "|---:|---|",
        *(f"| {i} | {c} |" for i, c in enumerate(classes)),
        "",
        f"Label schema (raw corpus labels → classes): `{json.dumps(meta.get('schema', {}), sort_keys=True)}`",
        "",
        "## Training data and protocol",
        "",
        f"- Corpus: {corpus}" + (f" (`{run.data}`)" if run is not None else ""),
        f"- Protocol: {data.get('protocol', 'unknown')} (no speaker appears in two parts; identical audio neither)",
    ]
    speakers = data.get("speakers", {})
    results = run.results if run is not None else {}
    n = results.get("n", {})
    for part in ("train", "val"):
        if part in speakers:
            lines.append(
                f"- {part} speakers ({n.get(part, len(data.get('audio_hashes', {}).get(part, [])))} clips): "
                f"{', '.join(speakers[part])}"
            )
    test_speakers = results.get("speakers", {}).get("test")
    if test_speakers:
        lines.append(
            f"- test speakers ({n.get('test', '?')} clips, never seen in training or early stopping): "
            f"{', '.join(test_speakers)}"
        )
    lines += [
        "",
        "## Metrics of the trained model (speech_emotion, `ser predict`)",
        "",
        "| part | n | accuracy | UAR | macro-F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for part, m in meta.get("metrics", {}).items():
        lines.append(
            f"| {part} | {m.get('n')} | {_pct(m.get('accuracy'))} | {_pct(m.get('uar'))} | {_pct(m.get('macro_f1'))} |"
        )
    lines += [
        "",
        "UAR is the unweighted average recall over classes; chance is "
        f"{_pct(1 / len(classes))} for {len(classes)} balanced classes.",
        "",
        "## Encoder",
        "",
        f"- Reference: `{encoder.get('reference')}` (family `{encoder.get('family')}`, {encoder.get('n_layers')} "
        "hidden states)",
        f"- Fingerprint (config + weights + preprocessing): `{encoder.get('fingerprint')}`",
        "- The encoder's weights are copied unchanged (frozen during training).",
        "",
        "## How this export was made",
        "",
    ]
    if info["family"] == "ssl":
        lines += [
            "The trained head is linear on the per-layer mean of the encoder's hidden states, standardised with one "
            "scale "
            "shared by all layers times one factor per layer (`TrainConfig(hidden=0, hf_compatible=True)`). That is "
            "exactly "
            "what the stock head computes (softmax layer weights → projector → masked mean over frames → classifier): "
            "the "
            "standardisation is folded into the layer weights and the projector, the calibration temperature "
            f"({info.get('temperature', 1.0):.4g}) into the classifier. The pipeline encodes a clip as `ser predict` "
            "does "
            "(on its own, unpadded), so the two give the same probabilities up to float rounding.",
        ]
    else:
        refit = info["refit"]
        lines += [
            "The stock `WhisperForAudioClassification` pads every clip to 30 s and averages all 1,500 encoder frames "
            "without a "
            "mask, while speech_emotion encodes clips unpadded and pools mean and std over the clip's own frames. A "
            "head "
            "trained on the latter does not transfer, so this export refits a linear head (softmax layer weights, "
            "standardisation folded into the projector, classifier) on the run's training audio encoded exactly as the "
            f"pipeline encodes it: {refit['n_train']} clips of speakers {', '.join(refit['train_speakers'])}, "
            "early-stopped on "
            f"the validation UAR of {refit['n_val']} clips of speakers {', '.join(refit['val_speakers'])} (best epoch "
            f"{refit['best_epoch']}; validation accuracy {_pct(refit['val']['accuracy'])}, UAR "
            f"{_pct(refit['val']['uar'])}). "
            "The exported probabilities are not temperature-calibrated.",
        ]
    check = info.get("check")
    lines += ["", "## What the export scored", ""]
    if not check:
        lines.append("Not checked at export (`evaluate=False`).")
    else:
        lines.append(
            f"Checked on {check['n']} clips ({check['clips']}), each through `pipeline()` on this folder and through "
            "`ser predict`'s path:"
        )
        lines.append("")
        if "pipeline" in check:
            lines += ["| path | accuracy | UAR | macro-F1 |", "|---|---:|---:|---:|"]
            for name, label in (
                ("pipeline", "`pipeline()` (this folder)"),
                ("ser_predict", "`ser predict` (speech_emotion)"),
            ):
                m = check[name]
                lines.append(f"| {label} | {_pct(m['accuracy'])} | {_pct(m['uar'])} | {_pct(m['macro_f1'])} |")
            lines.append("")
        if info["family"] == "ssl" and check.get("max_abs_diff") is not None:
            lines.append(f"- Largest difference in any class probability: {check['max_abs_diff']:.2g}")
        if "accuracy_gap" in check:
            lines.append(
                f"- Accuracy of `pipeline()` minus `ser predict`'s: {-100 * check['accuracy_gap']:+.1f} points"
            )
        lines.append(f"- Same top label: {_pct(check['same_label'])} of clips")
    lines += [
        "",
        "## Intended use and limits",
        "",
        f"- Research and prototyping of speech emotion recognition on speech like the training corpus ({corpus}: "
        "acted, "
        "studio-quality, read sentences). Expect lower accuracy on spontaneous, noisy, telephone or other-language "
        "speech.",
        "- The figures above come from a handful of held-out speakers; they are estimates with wide error bars, not "
        "guarantees. Validate on your own data before relying on it.",
        "- Emotion labels are portrayed categories, not what a speaker feels. Do not use the output for decisions "
        "about "
        "people (hiring, health, policing, surveillance) or without their knowledge.",
        "- Input: mono audio at 16 kHz (the pipeline resamples file inputs with ffmpeg). "
        + (
            "Clips over 30 s are cut to their first 30 s by the Whisper feature extractor."
            if info["family"] == "whisper"
            else "Clips over 30 s are encoded whole by the pipeline, while `ser predict` encodes them in 30 s windows: "
            "the two differ there."
        ),
        "",
    ]
    return "\n".join(lines)
