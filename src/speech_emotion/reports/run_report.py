"""``build_report(RUN)``: RUN/report.html plus PNGs in RUN/report/, from the run's own files.

Everything shown is read back from the run folder (labels.json, split.json,
metrics.jsonl, results.json, predictions.csv), so ``ser report RUN`` rebuilds it at any time.
"""

from __future__ import annotations

import csv
import html
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from speech_emotion.atomic import write_text
from speech_emotion.model.calibration import expected_calibration_error, reliability, softmax


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _read_predictions(run: Path, classes: list[str]) -> dict[str, dict]:
    parts: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    path = run / "predictions.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            part = parts[row["part"]]
            for key in ("path", "speaker", "sex"):
                part[key].append(row[key])
            part["true"].append(classes.index(row["true"]))
            part["logits"].append([float(row[f"logit_{c}"]) for c in classes])
    return {name: {k: np.asarray(v) for k, v in part.items()} for name, part in parts.items()}


def save_figure(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return f"report/{path.name}"


def plot_curves(history: list[dict], best_epoch: int, path: Path) -> str:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    if "val_loss" in history[0]:
        left.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
        right.plot(epochs, [h["val_uar"] for h in history], label="validation UAR")
        right.plot(epochs, [h["val_accuracy"] for h in history], label="validation accuracy", alpha=0.6)
    for axis, title in ((left, "Loss (class-weighted cross-entropy)"), (right, "Validation UAR / accuracy")):
        axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, classes: list[str], title: str, path: Path) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    for axis, matrix, name, fmt in (
        (axes[0], confusion, "counts", "d"),
        (axes[1], normalised, "row-normalised (recall)", ".2f"),
    ):
        image = axis.imshow(matrix, cmap="Blues", vmin=0)
        axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{title}: {name}")
        threshold = matrix.max() / 2 if matrix.max() else 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                axis.text(
                    j,
                    i,
                    format(matrix[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
        fig.colorbar(image, ax=axis, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(before: list[dict], after: list[dict], ece: tuple[float, float], path: Path) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for bins, name, value in ((before, "before", ece[0]), (after, "after temperature scaling", ece[1])):
        axis.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {value:.3f})",
        )
    axis.set_xlabel("confidence (top probability)")
    axis.set_ylabel("accuracy")
    axis.set_title("Reliability")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(fig, path)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _grouped_accuracy(part: dict, key: str) -> list[list]:
    predicted = part["logits"].argmax(axis=1)
    rows = []
    for group in sorted(set(part[key].tolist())):
        mask = part[key] == group
        if group != "":
            rows.append([group, int(mask.sum()), _pct(float((predicted[mask] == part["true"][mask]).mean()))])
    return rows


def build_report(run: str | Path) -> Path:
    """Write RUN/report.html (and RUN/report/*.png) from the run folder's files.

    Returns:
        The path of report.html.

    Raises:
        FileNotFoundError: RUN lacks results.json (training did not finish).
    """
    run = Path(run)
    results_file = run / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(f"{results_file}: missing; a report needs a finished run (was training interrupted?)")
    results = json.loads(results_file.read_text())
    labels = json.loads((run / "labels.json").read_text())
    split = json.loads((run / "split.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    classes = results["classes"]
    predictions = _read_predictions(run, classes)
    sections = [f"<h1>speech-emotion run report</h1><p class=muted>{html.escape(str(run.resolve()))}</p>"]

    summary = [
        [part, m["n"], _pct(m["accuracy"]), _pct(m["uar"]), _pct(m["macro_f1"])]
        for part in ("val", "test")
        if (m := results.get(part))
    ]
    sections.append(
        f"<h2>Results — {html.escape(results['protocol'])}</h2>"
        + _table(["part", "n", "accuracy", "UAR", "macro-F1"], summary)
        + f"<p>best epoch {results['best_epoch']} of {results['epochs_run']}; speakers: "
        + "; ".join(f"{p}: {', '.join(s)}" for p, s in results["speakers"].items())
        + "</p>"
    )

    before = labels["counts_before"]
    after = [
        [i, c, labels["counts_after"][c], f"{results['class_weights'].get(c, 0):.2f}"]
        for i, c in enumerate(labels["classes"])
    ]
    sections.append(
        "<h2>Labels</h2><div class=row>"
        + _table(["raw label", "files"], list(before.items()))
        + _table(["index", "class", "files", "class weight"], after)
        + "</div>"
        + f"<p>K = {labels['n_classes']}; encoded values: {labels['encoded_values']}; merged: "
        f"{labels['merged'] or '–'}; "
        f"dropped: {labels['dropped'] or '–'}; synonyms: {labels['synonyms'] or '–'}</p>"
    )

    part_rows = [[name, ", ".join(p["speakers"]), p["n"], *p["counts"].values()] for name, p in split["parts"].items()]
    leakage = split["leakage"]
    sections.append(
        f"<h2>Split and leakage — {html.escape(split['protocol'])}</h2>"
        + _table(["part", "speakers", "files", *classes], part_rows)
        + f"<p>speaker overlap: {len(leakage['speaker_overlap'])}; identical audio across parts: "
        f"{len(leakage['content_overlap'])}; "
        f"check {'passed' if leakage['ok'] else 'FAILED'}</p>"
    )

    figures = run / "report"
    sections.append(
        "<h2>Training curves</h2>"
        + f"<img src='{plot_curves(history, results['best_epoch'], figures / 'curves.png')}'>"
    )

    scored = "test" if "test" in results else "val"
    metrics = results[scored]
    sections.append(
        f"<h2>Confusion ({scored})</h2>"
        + f"<img src='{plot_confusion(np.asarray(metrics['confusion']), classes, scored, figures / 'confusion.png')}'>"
    )
    per_class = [
        [c, f"{v['precision']:.2f}", f"{v['recall']:.2f}", f"{v['f1']:.2f}", v["support"]]
        for c, v in metrics["per_class"].items()
    ]
    sections.append(
        f"<h2>Per class ({scored})</h2>" + _table(["class", "precision", "recall", "F1", "support"], per_class)
    )

    if scored in predictions:
        part = predictions[scored]
        sections.append(
            f"<h2>Accuracy per speaker and sex ({scored})</h2><div class=row>"
            + _table(["speaker", "n", "accuracy"], _grouped_accuracy(part, "speaker"))
            + (_table(["sex", "n", "accuracy"], _grouped_accuracy(part, "sex")) if any(part["sex"]) else "")
            + "</div>"
        )
        temperature = results["calibration"]["temperature"]
        raw, scaled = softmax(part["logits"]), softmax(part["logits"] / temperature)
        ece = (expected_calibration_error(raw, part["true"]), expected_calibration_error(scaled, part["true"]))
        image = plot_reliability(
            reliability(raw, part["true"]), reliability(scaled, part["true"]), ece, figures / "reliability.png"
        )
        sections.append(
            f"<h2>Calibration ({scored})</h2><p>temperature {temperature:.3f}, fitted on validation speakers; "
            f"ECE {ece[0]:.3f} → {ece[1]:.3f}</p><img src='{image}'>"
        )

    alarms = [[a["check"], a["severity"], a.get("epoch") or "", a["message"]] for a in results["alarms"]]
    sections.append(
        "<h2>Sanity monitors</h2>"
        + (_table(["check", "severity", "epoch", "message"], alarms) if alarms else "<p>no alarms</p>")
    )

    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em "
        "auto;color:#222}table{border-collapse:collapse;margin:.5em 1em .5em 0}"
        "td,th{border:1px solid #ccc;padding:3px "
        "8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        ".row{display:flex;flex-wrap:wrap;align-items:flex-start}img{max-width:100%}.muted{color:#777}h2{margin-top:1.6em}"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>speech-emotion report</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
    write_text(run / "report.html", page)
    return run / "report.html"
