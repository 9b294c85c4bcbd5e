"""Log a training run to MLflow: params, per-epoch metrics, reports, the confusion plot, the bundle.

MLflow is optional (``pip install 'speech-emotion[all]'``); it is imported only when a tracking
URI is given. The run folder stays the source of truth: MLflow gets a copy.

What is logged to one MLflow run (experiment ``$MLFLOW_EXPERIMENT_NAME``, default
``speech-emotion``; run name: the run folder's name):

* params: the resolved config (``config.json``), flattened (``train.lr``, ``test_speakers``, …);
* metrics: every epoch's ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_uar`` with
  ``step`` = epoch; at the end ``best_epoch``, ``best_val_{accuracy,uar,macro_f1}`` (the kept
  head on the validation speakers), ``test_{accuracy,uar,macro_f1}`` and the calibration temperature;
* artifacts: ``labels.json`` (label report), ``split.json`` (split and leakage report),
  ``results.json``, ``metrics.jsonl``, ``report/confusion.png`` (and the other report plots,
  ``report.html``), and the bundle under ``model/``.

``RUN/tracking.json`` records the MLflow run id, so ``ser train --resume`` goes on logging to the
same MLflow run (epochs already logged are not logged twice).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from pathlib import Path

from speech_emotion.atomic import write_json
from speech_emotion.errors import TrackingError

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
DEFAULT_EXPERIMENT = "speech-emotion"
MLFLOW_PIN = "mlflow==3.17.2"
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_uar")
MAX_PARAM_LENGTH = 6000


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ImportError(
            f"--tracking-uri needs MLflow, which is not installed ({error}); install it with "
            f"`pip install 'speech-emotion[all]'` (or `pip install {MLFLOW_PIN}`), or drop --tracking-uri / unset "
            "MLFLOW_TRACKING_URI"
        ) from None
    return MlflowClient, Metric, Param, RunStatus


def tracking_uri(uri: str | None) -> str | None:
    """The URI to log to: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else None (no tracking).

    >>> tracking_uri("http://127.0.0.1:5000")
    'http://127.0.0.1:5000'
    """
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Config → MLflow params: nested dicts become dotted keys, lists comma-joined, None ``"None"``.

    A value longer than MLflow accepts (a whole saved split) is replaced by a note; the full
    value is in the ``config.json`` artifact.

    >>> flatten_params({"encoder": "tiny", "test_speakers": ["05", "06"], "train": {"lr": 0.003}})
    {'encoder': 'tiny', 'test_speakers': '05,06', 'train.lr': '0.003'}
    """
    params = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(json.dumps(value, default=str)) > 500:
            params[name] = "(see config.json)"
        elif isinstance(value, dict):
            params |= flatten_params(value, prefix=f"{name}.")
        else:
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            params[name] = text if len(text) <= MAX_PARAM_LENGTH else "(see config.json)"
    return params


class MlflowTracker:
    """One MLflow run mirroring one run folder.

    Args:
        uri: tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``, a folder, …).
        run: the run folder (``RUN/tracking.json`` is read and written there).
        experiment: MLflow experiment name; default ``$MLFLOW_EXPERIMENT_NAME`` or ``speech-emotion``.

    Raises:
        ImportError: MLflow is not installed (the message says how to install it).
    """

    def __init__(self, uri: str, run: str | Path, *, experiment: str | None = None):
        MlflowClient, self._Metric, self._Param, self._RunStatus = _mlflow()
        self.uri = uri
        self.run = Path(run)
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self._logged_epochs: set[int] = set()

    def start(self, config: dict) -> str:
        """Create the MLflow run (or reopen the one in ``RUN/tracking.json``) and log params.

        Returns:
            The MLflow run id.

        Raises:
            TrackingError: the server cannot be reached or refuses the request.
        """
        from mlflow.exceptions import MlflowException

        previous = self._previous()
        try:
            if previous is not None:
                self.run_id = previous["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                history = self.client.get_metric_history(self.run_id, "train_loss")
                self._logged_epochs = {int(m.step) for m in history}
                log.info(
                    "MLflow: resuming run %s at %s (%d epochs logged)", self.run_id, self.uri, len(self._logged_epochs)
                )
                return self.run_id
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
            created = self.client.create_run(
                experiment_id, run_name=self.run.name, tags={"speech_emotion.run_folder": str(self.run.resolve())}
            )
            self.run_id = created.info.run_id
            write_json(
                self.run / TRACKING_FILE,
                {"uri": self.uri, "run_id": self.run_id, "experiment": self.experiment, "experiment_id": experiment_id},
            )
            params = [self._Param(k, v) for k, v in flatten_params(config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[start : start + 100])
        except MlflowException as error:
            raise TrackingError(
                f"MLflow tracking at {self.uri}: {error.message}; check --tracking-uri (or MLFLOW_TRACKING_URI), "
                "or drop it to train without tracking"
            ) from None
        except OSError as error:
            raise TrackingError(
                f"MLflow tracking at {self.uri} cannot be reached ({error}); start the server, "
                "fix --tracking-uri, or drop it to train without tracking"
            ) from None
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)
        return self.run_id

    def _previous(self) -> dict | None:
        try:
            previous = json.loads((self.run / TRACKING_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if previous.get("uri") != self.uri or not previous.get("run_id"):
            return None
        return previous

    def log_epoch(self, record: dict) -> None:
        """Log one epoch's numbers with ``step`` = epoch; a failure is a warning, not the end of training."""
        epoch = record.get("epoch")
        if not isinstance(epoch, int) or epoch in self._logged_epochs:
            return
        timestamp = int(time.time() * 1000)
        metrics = [
            self._Metric(name, float(record[name]), timestamp, epoch)
            for name in EPOCH_METRICS
            if isinstance(record.get(name), (int, float))
        ]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as error:  # a network blip must not end an hour of training
            log.warning("MLflow: epoch %d not logged: %s", epoch, error)
            return
        self._logged_epochs.add(epoch)

    def finish(self, results: dict) -> None:
        """Log final metrics and the run folder's reports and bundle as artifacts; mark the run FINISHED."""
        timestamp = int(time.time() * 1000)
        final = {"best_epoch": results.get("best_epoch")}
        for part, prefix in (
            ("val", "best_val"),
            ("test", "test"),
        ):  # best_val_*: not to mix with the per-epoch val_* series
            for name in ("accuracy", "uar", "macro_f1"):
                final[f"{prefix}_{name}"] = (results.get(part) or {}).get(name)
        final["temperature"] = (results.get("calibration") or {}).get("temperature")
        metrics = [self._Metric(k, float(v), timestamp, 0) for k, v in final.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=metrics)
        for name in (
            "config.json",
            "labels.json",
            "split.json",
            "skipped.json",
            "results.json",
            "metrics.jsonl",
            "predictions.csv",
            "report.html",
        ):
            if (self.run / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run / name))
        if (self.run / "report").is_dir():
            self.client.log_artifacts(self.run_id, str(self.run / "report"), artifact_path="report")
        self.client.log_artifacts(self.run_id, str(self.run / "model"), artifact_path="model")
        self._terminate("FINISHED")

    def _terminate(self, status: str) -> None:
        # MLflow writes "View run … at: URL" to stdout, where `ser … --json` keeps its JSON: log it instead.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self.client.set_terminated(self.run_id, status=status)
        for line in printed.getvalue().splitlines():
            log.info("MLflow: %s", line)

    def fail(self) -> None:
        """Mark the MLflow run FAILED (best effort: the training error is what matters)."""
        if self.run_id is None:
            return
        try:
            self._terminate("FAILED")
        except Exception as error:
            log.warning("MLflow: could not mark run %s failed: %s", self.run_id, error)
