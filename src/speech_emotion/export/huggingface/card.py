"""The export's model card (``README.md``): classes, data and speakers, protocol, metrics, encoder, method, limits.

Every figure comes from the bundle's metadata, the run's ``results.json`` and the export's own
summary (``speech_emotion_export.json``), so the card says nothing the folder cannot back up.
"""

from __future__ import annotations

import json
from pathlib import Path

from speech_emotion.export.huggingface.run_data import RunData


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _looks_like_hub_id(reference: str) -> bool:
    return (
        bool(reference)
        and not Path(reference).exists()
        and reference.count("/") == 1
        and not reference.startswith((".", "/", "~"))
    )


def model_card(info: dict, meta: dict, run: RunData | None) -> str:
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
            f"its L2 penalty ({refit['config']['weight_decay']:g}) chosen and its epochs stopped on "
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
