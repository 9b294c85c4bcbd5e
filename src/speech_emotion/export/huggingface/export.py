"""``export_huggingface``: write the folder, check it through ``transformers.pipeline``, summarise it."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from speech_emotion.atomic import replace_folder, write_json
from speech_emotion.errors import BundleError
from speech_emotion.export.exportable import check_exportable
from speech_emotion.export.huggingface.card import model_card
from speech_emotion.export.huggingface.check import check_export
from speech_emotion.export.huggingface.head import hf_head_weights, load_feature_extractor, set_head, stock_model
from speech_emotion.export.huggingface.run_data import RunData, find_run_folder
from speech_emotion.export.huggingface.whisper_refit import refit_whisper
from speech_emotion.features.encoders.transformers_logging import quiet_transformers
from speech_emotion.features.store import FeatureStore
from speech_emotion.inference.predictor import Predictor
from speech_emotion.progress import Progress, no_progress
from speech_emotion.version import __version__

log = logging.getLogger(__name__)

EXPORT_INFO = "speech_emotion_export.json"
CARD = "README.md"


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
            a stock class (eGeMAPS), a speaker-normalised model, a model adapted per speaker
            (``ser adapt --per-speaker``), a model trained on bf16 features, a run without its
            corpus.
        FileNotFoundError: the corpus is not where the run says (pass ``data``).
    """
    started = time.perf_counter()
    model, out = Path(model), Path(out)
    predictor = Predictor.from_pretrained(model, encoder=encoder, backend="torch", device=device)
    bundle = predictor.backend.bundle
    check_exportable(predictor, target="Hugging Face")
    family = bundle.meta.encoder.family
    adapted_from = bundle.meta.adaptation.get("adapted_from")
    if family == "whisper" and bundle.meta.adaptation.get("adapted"):
        raise BundleError(
            f"{bundle.path}: the model is adapted to the domain {bundle.meta.adaptation.get('domain')!r} (ser adapt), "
            "and a Whisper export refits its head on the run's training audio, so it would drop the adaptation; "
            "export the model it was adapted from"
            + (f" ({adapted_from})" if adapted_from else "")
            + ", or use --format onnx, which keeps it"
        )
    store = store if store is not None else FeatureStore()
    run_folder = find_run_folder(model, bundle.path)
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
                run = RunData(run_folder, bundle, data, progress)
            except FileNotFoundError:
                if family == "whisper" or data is not None:
                    raise
                log.warning(
                    "%s: the run's corpus is not where config.json says; the export is checked on synthetic signals "
                    "only (pass data=... / --data to score it on the test speakers)",
                    run_folder,
                )

    classes = bundle.classes
    hf_model = stock_model(predictor.encoder, classes)
    extractor = load_feature_extractor(predictor.encoder)
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
        weights, refit = refit_whisper(hf_model, extractor, predictor, run, store, progress)
        info["method"] = "linear head refitted on pipeline-encoded training audio"
        info["refit"] = refit
    set_head(hf_model, weights)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with quiet_transformers():
            hf_model.save_pretrained(staging)
            extractor.save_pretrained(staging)
            if evaluate:
                info["check"] = check_export(staging, predictor, run, store, progress, exact=family == "ssl")
        info["export_s"] = round(time.perf_counter() - started, 1)
        write_json(staging / EXPORT_INFO, info)
        (staging / CARD).write_text(model_card(info, bundle.meta.to_dict(), run), encoding="utf-8")
        replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return _summary(info, out)


def _summary(info: dict, out: Path) -> dict:
    summary = {"architecture": info["architecture"], "classes": ", ".join(info["classes"]), "method": info["method"]}
    refit = info.get("refit")
    if refit:
        summary["refit"] = (
            f"L2 penalty {refit['config']['weight_decay']:g} (validation UAR {refit['val']['uar']:.1%}, speakers "
            f"{', '.join(refit['val_speakers'])})"
        )
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
