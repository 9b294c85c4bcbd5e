"""The run behind an export: its corpus reloaded and split as in training.

A Whisper export refits its head on the run's training and validation clips, and every export
is scored on the run's held-out test speakers; both need the run folder made by ``ser train``
(``config.json``, ``split.json``, ``model/``) and the corpus it names. Training and validation
rows are found by audio content hash (``model.json`` records them), so a corpus that changed
since training is an error instead of silently used.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from speech_emotion.data.audio import load_audio
from speech_emotion.data.dataset import load_dataset
from speech_emotion.errors import BundleError
from speech_emotion.progress import Progress
from speech_emotion.training.config import RunConfig


def find_run_folder(model: Path, bundle_path: Path) -> Path | None:
    """The run folder of ``model`` (given as the run or its ``model/`` folder), or None for a copied bundle."""
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


class RunData:
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
