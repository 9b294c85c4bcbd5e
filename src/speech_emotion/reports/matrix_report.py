"""``build_matrix_report(CV)``: the cross-corpus matrix of ``ser cv --leave-corpus-out`` as a heat map and tables.

Everything shown is read back from ``CV/cv.json``: rows are the corpora a model was trained on, columns
the corpus it was tested on; each cell is the unweighted average recall (UAR) of the model on a corpus it
never saw, unadapted (left) and adapted to that corpus from its own unlabelled clips (right).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from speech_emotion.atomic import write_text
from speech_emotion.reports.run_report import pyplot, save_figure


def plot_matrix(cv: dict, path: Path) -> str:
    """UAR heat maps (unadapted, adapted): one row per training set, one column per test corpus."""
    plt = pyplot()
    rows = list(dict.fromkeys(" + ".join(c["train"]) for c in cv["matrix"]))
    columns = list(cv["corpora"])
    fig, axes = plt.subplots(1, 2, figsize=(4 + 2.2 * len(columns), 1.2 + 0.6 * len(rows)), squeeze=False)
    for ax, (title, pick) in zip(axes[0], (("unadapted", lambda c: c), ("adapted", lambda c: c["adapted"]))):
        values = np.full((len(rows), len(columns)), np.nan)
        for cell in cv["matrix"]:
            values[rows.index(" + ".join(cell["train"])), columns.index(cell["test"])] = pick(cell)["uar"]
        ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(f"UAR, {title} (chance {1 / len(cv['classes']):.0%})")
        ax.set_xlabel("tested on")
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0%}", ha="center", va="center", color="white" if value < 0.5 else "black")
    axes[0][0].set_ylabel("trained on")
    return save_figure(fig, path)


def build_matrix_report(folder: str | Path) -> Path:
    """Write ``FOLDER/report.html`` and ``FOLDER/report/matrix.png`` from ``FOLDER/cv.json``."""
    folder = Path(folder)
    cv = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    image = plot_matrix(cv, folder / "report" / "matrix.png")
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                " + ".join(c["train"]),
                c["test"],
                c["n"],
                f"{c['accuracy']:.1%}",
                f"{c['uar']:.1%}",
                f"{c['adapted']['uar']:.1%}",
                c["adapted"]["n_clips"],
            )
        )
        + "</tr>"
        for c in cv["matrix"]
    )
    mean = cv["leave_one_out"]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>speech-emotion cross-corpus "
        "report</title></head><body>"
        f"<h1>Cross-corpus matrix ({html.escape(cv['protocol'])})</h1>"
        f"<p>Classes: {html.escape(', '.join(cv['classes']))}. Encoder: {html.escape(str(cv['encoder']))}. "
        "Every cell is a corpus the model never heard; adapted figures use the test corpus's own unlabelled clips "
        "and are reported apart.</p>"
        f"<p>Leave one corpus out, mean UAR: <b>{mean['mean']['uar']:.1%}</b> unadapted, "
        f"<b>{mean['adapted_mean']['uar']:.1%}</b> adapted.</p>"
        f"<img src='{image}' alt='UAR heat maps'>"
        "<table border='1' cellpadding='4'><tr><th>trained on</th><th>tested on</th><th>n</th><th>accuracy</th>"
        "<th>UAR</th><th>UAR adapted</th><th>clips for adaptation</th></tr>"
        f"{rows}</table></body></html>"
    )
    write_text(folder / "report.html", page)
    return folder / "report.html"
