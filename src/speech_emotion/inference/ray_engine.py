"""The Ray engine: ``ser predict --engine ray`` and ``ser cache fill --engine ray`` over a Ray cluster.

Both are Ray Data pipelines over the same inputs as the local engine
(:func:`~speech_emotion.data.inputs.expand_inputs`):

1. the files are listed on the driver, numbered in input order;
2. CPU tasks decode them: :func:`decode_batch`;
3. an actor pool, each actor loading the model (or encoder) once, on a GPU when
   ``num_gpus_per_worker`` asks for one, predicts batches (:class:`PredictionWorker`) or fills
   the store (:class:`~speech_emotion.inference.ray_store_fill.StoreFillWorker`);
4. the driver gets the rows back in input order, and checks that every file came back once.

Rows are those of the local ``ser predict`` (same labels, probabilities equal to float
rounding: each clip's features do not depend on its batch), unreadable files included as error
rows. An actor that dies (a lost node, a killed process) is restarted by Ray and its batches
run again; the driver refuses a result with a file missing or repeated rather than writing it.
With ``--timeline`` the actors read each recording themselves, streamed in blocks as the local
engine does (a long recording is not shipped whole through the object store).

Ray is an optional extra (``pip install 'speech-emotion[ray]'``), imported only here and only
when a pipeline runs. ``address=None`` joins the cluster this process already joined, else
starts a local one on this machine; ``"auto"`` joins the cluster ``ray start`` runs here;
``"ray://HOST:10001"`` a remote one through Ray Client. Paths (model, inputs, feature store)
must be the same on every node: a shared file system.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.data.prefetch import DecodedFile, decode_file
from speech_emotion.features.devices import check_device, check_precision

log = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'speech-emotion[ray]'"

DECODE_CPUS = 0.25
"""Logical CPUs a decoding task reserves: decoding is light next to encoding, so several run per core."""

ROW_COLUMNS = ("index", "segment", "path", "label", "uncertain", "error", "start", "end", "probabilities", "worker")
"""Columns of a prediction batch as actors return it (see :func:`rows_from_batch`)."""


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"--engine ray needs Ray, which is not installed; {RAY_INSTALL}") from error
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How a pipeline uses the cluster.

    Attributes:
        address: ``None`` (join this process's cluster, else start one here), ``"auto"``
            (the cluster ``ray start`` runs on this machine) or ``"ray://HOST:10001"``.
        workers: actors in the pool, each with its own copy of the model.
        num_gpus_per_worker: GPUs each actor reserves (0: CPU actors); fractions share a GPU.
        cpus_per_worker: logical CPUs each actor reserves (also its compute threads, rounded).
        batch_size: files per batch handed to an actor.
    """

    address: str | None = None
    workers: int = 1
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 16

    def check(self, device: str) -> str:
        """The device checked against the GPUs asked for; returns it normalised.

        Raises:
            ValueError: counts out of range, ``cuda`` without GPUs per worker (Ray hides the GPUs
                from actors that reserve none), or GPUs reserved for ``cpu`` actors.
        """
        if self.workers < 1:
            raise ValueError(f"--workers: expected at least 1 actor, got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1 file, got {self.batch_size}")
        if self.num_gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError(
                f"--num-gpus-per-worker must be >= 0 and cpus_per_worker > 0, got {self.num_gpus_per_worker} and "
                f"{self.cpus_per_worker}"
            )
        device = check_device(device)
        if device.startswith("cuda") and not self.num_gpus_per_worker:
            raise ValueError(
                f"--device {device} with --engine ray: Ray shows a GPU only to actors that reserve one; add "
                "--num-gpus-per-worker 1 (or a fraction to share a GPU)"
            )
        if device == "cpu" and self.num_gpus_per_worker:
            raise ValueError(
                f"--num-gpus-per-worker {self.num_gpus_per_worker} reserves GPUs that --device cpu would leave idle; "
                "drop one of them"
            )
        return device

    @property
    def threads(self) -> int:
        """Compute threads per actor: its reserved CPUs, at least one."""
        return max(1, int(round(self.cpus_per_worker)))


def connect(address: str | None, *, num_cpus: int | None = None) -> Any:
    """Join a Ray cluster (see :class:`RayOptions` ``address``); returns the ``ray`` module.

    A cluster started here passes on ``OMP_WAIT_POLICY`` and an absolute ``PYTHONPATH``, so
    that its workers import the same speech_emotion as this process.

    Args:
        address: as :class:`RayOptions` ``address``.
        num_cpus: logical CPUs of a cluster started here (default: the cores); not for ``address``.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if address is None and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p
        )
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING}
    if address is None:
        options |= {"include_dashboard": False, "num_cpus": num_cpus}
    ray.init(address=address, **options)
    return ray


def check_cluster_cpus(ray: Any, options: RayOptions, *, decoding: bool) -> None:
    """Refuse an actor pool that would leave no CPU for the decoding tasks (the pipeline would wait forever).

    Raises:
        ValueError: the cluster's CPUs cannot hold ``workers × cpus_per_worker`` plus one decoding task.
    """
    n_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    needed = options.workers * options.cpus_per_worker + (DECODE_CPUS if decoding else 0.0)
    if n_cpus and needed > n_cpus + 1e-9:
        fits = max(0.05, (n_cpus - DECODE_CPUS) / options.workers)
        raise ValueError(
            f"the Ray cluster has {n_cpus:g} CPUs; {options.workers} actor(s) × {options.cpus_per_worker:g} CPUs"
            + (f" + {DECODE_CPUS:g} for a decoding task" if decoding else "")
            + f" need {needed:g}: lower --cpus-per-worker (e.g. {fits:.2f}) or --workers"
        )


def configure_data(ray: Any) -> None:
    """Ray Data as the engines need it: rows in input order, no progress bars of its own (the caller's counts files)."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: decode a batch's files (``index``, ``path`` as given, ``location`` absolute) to 16 kHz.

    Returns ``index``, ``path``, ``location``, ``signal`` (empty for an unreadable file) and
    ``error`` (``""`` when none).
    """
    files = [decode_file(str(location)) for location in batch["location"]]
    signals = np.empty(len(files), dtype=object)
    signals[:] = [f.signal if f.signal is not None else np.zeros(0, np.float32) for f in files]
    return {
        "index": np.asarray(batch["index"], dtype=np.int64),
        "path": np.asarray(batch["path"], dtype=object),
        "location": np.asarray(batch["location"], dtype=object),
        "signal": signals,
        "error": np.asarray([f.error or "" for f in files], dtype=object),
    }


def decoded_files(batch: dict[str, np.ndarray]) -> list[DecodedFile]:
    """The files of a :func:`decode_batch` batch, with writable signals."""
    # Arrays from the object store are read-only; the encoders take writable ones (torch.from_numpy).
    return [
        DecodedFile(str(path), None, str(error))
        if error
        else DecodedFile(str(path), np.array(signal, np.float32), None)
        for path, signal, error in zip(batch["path"], batch["signal"], batch["error"])
    ]


class PredictionWorker:
    """Ray actor: the model loaded once; batches of files in, one row per file (or timeline segment) out.

    Args:
        model: the model folder (a shared path).
        predictor_options: keyword arguments of :meth:`Predictor.from_pretrained`.
        min_confidence: as in ``ser predict``.
        timeline: keyword arguments of :func:`~speech_emotion.inference.timeline.predict_timeline`
            (``window``, ``hop``, ``vad``, ``max_windows``), or None for one row per file.
        threads: compute threads of this actor.
        speaker: who speaks in every file (a model adapted per speaker), or None.
    """

    def __init__(
        self,
        model: str,
        predictor_options: dict,
        min_confidence: float | None,
        timeline: dict | None,
        threads: int,
        speaker: str | None = None,
    ):
        os.environ.setdefault("SER_THREADS", str(threads))  # before torch starts its thread pool
        from speech_emotion.inference.predictor import Predictor

        self.predictor = Predictor.from_pretrained(model, **predictor_options)
        self.min_confidence = min_confidence
        self.timeline = timeline
        self.speaker = speaker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[tuple[int, int, dict]] = []
        if self.timeline is None:
            predicted = self.predictor.predict_decoded(
                decoded_files(batch), min_confidence=self.min_confidence, speaker=self.speaker
            )
            rows = [(int(index), 0, row) for index, row in zip(batch["index"], predicted)]
        else:
            for index, path, location in zip(batch["index"], batch["path"], batch["location"]):
                segments = self._timeline_rows(str(path), str(location))
                # A recording without speech has no rows: a marker (segment -1) still says it was done.
                numbered = list(enumerate(segments)) or [(-1, {"path": str(path)})]
                rows.extend((int(index), n, row) for n, row in numbered)
        return columns_from_rows(rows, list(self.predictor.classes))

    def _timeline_rows(self, path: str, location: str) -> list[dict]:
        """``ser predict --timeline``'s rows of one recording: its segments, then an error row if it breaks."""
        from speech_emotion.errors import AudioError, TimelineLimitError
        from speech_emotion.inference.timeline import predict_timeline

        rows = []
        try:
            for segment in predict_timeline(
                self.predictor, location, min_confidence=self.min_confidence, **self.timeline
            ):
                rows.append({"path": path} | segment)
        except AudioError as error:
            rows.append({"path": path, "error": error.reason})
        except TimelineLimitError as error:  # a header without a length: counted while cutting
            rows.append({"path": path, "error": str(error).removeprefix(f"{location}: ")})
        return rows


def columns_from_rows(rows: Sequence[tuple[int, int, dict]], classes: list[str]) -> dict[str, np.ndarray]:
    """Prediction rows (with their input index and segment number) as the columns of :data:`ROW_COLUMNS`.

    Example:
        >>> columns = columns_from_rows([(0, 0, {"path": "a.wav", "label": "calm", "probabilities": {"calm": 1.0}}),
        ...                              (1, 0, {"path": "b.wav", "error": "file not found"})], ["calm"])
        >>> [row == expected for row, expected in zip(rows_from_batch(columns, ["calm"]),
        ...  [{"path": "a.wav", "label": "calm", "probabilities": {"calm": 1.0}},
        ...   {"path": "b.wav", "error": "file not found"}])]
        [True, True]
    """
    n = len(rows)
    probabilities = np.full((n, len(classes)), np.nan)
    columns = {
        "index": np.asarray([r[0] for r in rows], dtype=np.int64),
        "segment": np.asarray([r[1] for r in rows], dtype=np.int64),
        "path": np.asarray([r[2]["path"] for r in rows], dtype=object),
        "label": np.asarray([r[2].get("label") or "" for r in rows], dtype=object),
        "uncertain": np.asarray([-1 if "uncertain" not in r[2] else int(r[2]["uncertain"]) for r in rows], np.int8),
        "error": np.asarray([r[2].get("error", "") for r in rows], dtype=object),
        "start": np.asarray([r[2].get("start", np.nan) for r in rows], dtype=np.float64),
        "end": np.asarray([r[2].get("end", np.nan) for r in rows], dtype=np.float64),
        "probabilities": probabilities,
        "worker": np.full(n, os.getpid(), dtype=np.int64),
    }
    for i, (_, _, row) in enumerate(rows):
        if "probabilities" in row:
            probabilities[i] = [row["probabilities"][c] for c in classes]
    return columns


def rows_from_batch(batch: dict[str, np.ndarray], classes: list[str]) -> list[dict | None]:
    """Rows as ``ser predict`` writes them, from a batch of :func:`columns_from_rows`.

    A marker of a file without rows (segment -1: a recording without speech) gives None.
    """
    rows: list[dict | None] = []
    for i in range(len(batch["index"])):
        if batch["segment"][i] < 0:
            rows.append(None)
            continue
        row: dict[str, Any] = {"path": str(batch["path"][i])}
        if batch["error"][i]:
            row["error"] = str(batch["error"][i])
            rows.append(row)
            continue
        if not np.isnan(batch["start"][i]):
            row["start"], row["end"] = float(batch["start"][i]), float(batch["end"][i])
        row["label"] = str(batch["label"][i]) or None
        row["probabilities"] = {c: float(p) for c, p in zip(classes, batch["probabilities"][i])}
        if batch["uncertain"][i] >= 0:
            row["uncertain"] = bool(batch["uncertain"][i])
        rows.append(row)
    return rows


def input_dataset(ray: Any, paths: Sequence[str | Path], batch_size: int) -> Any:
    """The files, numbered: rows keep each path as given, nodes read it at its absolute ``location``."""
    items = [{"index": i, "path": str(p), "location": str(Path(p).absolute())} for i, p in enumerate(paths)]
    return ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))


def actor_options(ray: Any, options: RayOptions) -> dict[str, Any]:
    """``map_batches`` arguments of the actor pool: its size and what each actor reserves."""
    return {
        "batch_size": options.batch_size,
        "batch_format": "numpy",
        "compute": ray.data.ActorPoolStrategy(size=options.workers),
        "num_cpus": options.cpus_per_worker,
        "num_gpus": options.num_gpus_per_worker or None,
    }


def predict_with_ray(
    model: str | Path,
    paths: Sequence[str | Path],
    *,
    options: RayOptions = RayOptions(),
    device: str = "auto",
    precision: str | None = None,
    encoder: str | None = None,
    allow_encoder_mismatch: bool = False,
    backend: str = "auto",
    min_confidence: float | None = None,
    speaker: str | None = None,
    timeline: dict | None = None,
    progress: Callable[[int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Iterator[dict]:
    """``ser predict`` as a Ray Data pipeline: rows in input order, as the local engine gives them.

    Args:
        model: run folder, bundle or ONNX export (a path every node sees).
        paths: audio files (see :func:`~speech_emotion.data.inputs.expand_inputs`).
        options: the cluster and the actor pool (:class:`RayOptions`).
        device, precision, encoder, allow_encoder_mismatch, backend: as
            :meth:`~speech_emotion.inference.predictor.Predictor.from_pretrained`, in every actor.
        min_confidence: below this top probability ``label`` is ``None`` (``uncertain``).
        speaker: who speaks in every file, for a model adapted per speaker (``ser adapt --per-speaker``).
        timeline: ``{"window", "hop", "vad", "max_windows"}`` for ``--timeline`` rows, or None.
        progress: called with the number of files finished.
        on_batch: called with an actor's process id and its number of rows, as each batch arrives
            (to watch the pool; the tests kill an actor with it).

    Yields:
        Per file, in input order, ``{"path", "label", "probabilities"}`` or ``{"path", "error"}``
        (per segment with ``timeline``).

    Raises:
        ImportError: Ray is not installed.
        ValueError: bad options (see :meth:`RayOptions.check`), a refused precision, a speaker the model was
            not adapted to.
        RuntimeError: the cluster returned a file twice or not at all.
    """
    from speech_emotion.model.metadata import BundleMeta

    device = options.check(device)
    if precision is not None:
        precision = check_precision(precision)
    model = str(Path(model).absolute())
    meta = BundleMeta.read(model)[0]  # a bad model fails here, before the cluster starts
    classes = list(meta.classes)
    adapted_to = [listed["speaker"] for listed in meta.adaptation.get("speakers", [])]
    if speaker is not None and speaker not in adapted_to:
        raise ValueError(
            f"speaker {speaker!r}: this model was adapted to {len(adapted_to)} speaker(s)"
            + (f" ({', '.join(adapted_to[:10])})" if adapted_to else "")
            + "; name one of them, or drop --speaker"
        )
    if not paths:
        return
    ray = connect(options.address)
    check_cluster_cpus(ray, options, decoding=timeline is None)
    configure_data(ray)
    predictor_options = {
        "encoder": encoder,
        "allow_encoder_mismatch": allow_encoder_mismatch,
        "backend": backend,
        "device": device,
        "precision": precision,
    }
    data = input_dataset(ray, paths, options.batch_size)
    if timeline is None:
        data = data.map_batches(decode_batch, batch_size=options.batch_size, batch_format="numpy", num_cpus=DECODE_CPUS)
    results = data.map_batches(
        PredictionWorker,
        fn_constructor_args=(model, predictor_options, min_confidence, timeline, options.threads, speaker),
        **actor_options(ray, options),
    )
    yield from _in_input_order(results, len(paths), classes, progress, on_batch)


def _in_input_order(
    results: Any,
    n_files: int,
    classes: list[str],
    progress: Callable[[int], None] | None,
    on_batch: Callable[[int, int], None] | None,
) -> Iterator[dict]:
    """Rows of every file once, in input order; a file missing or repeated is an error, never written."""
    waiting: dict[int, list[dict]] = {}
    next_index = 0
    seen: set[int] = set()
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        if on_batch is not None and len(batch["index"]):
            on_batch(int(batch["worker"][0]), len(batch["index"]))
        rows = rows_from_batch(batch, classes)
        indices = [int(i) for i in batch["index"]]
        by_file: dict[int, list[dict]] = {}
        for index, row in zip(indices, rows):
            by_file.setdefault(index, [])
            if row is not None:
                by_file[index].append(row)
        repeated = sorted(seen & set(by_file))
        if repeated:
            raise RuntimeError(
                f"the Ray pipeline returned file #{repeated[0]} twice; no results were written for it twice — rerun"
            )
        seen |= set(by_file)
        waiting.update(by_file)
        while next_index in waiting:
            yield from waiting.pop(next_index)
            next_index += 1
        if progress is not None:
            progress(len(by_file))
    if next_index != n_files:
        missing = [i for i in range(n_files) if i not in seen]
        raise RuntimeError(
            f"the Ray pipeline returned {len(seen)} of {n_files} files (first missing: #{missing[0]}); rerun"
        )
