"""``ser cache fill --engine ray``: the feature store filled by a Ray cluster, for corpora too large for one machine.

The pipeline of :mod:`~speech_emotion.inference.ray_engine` with an encoder in place of a
model: files decoded in CPU tasks, encoded by an actor pool that loads the encoder once per
actor, written to a feature store every node shares. ``ser train`` and ``ser cv`` then read
every feature from it (the key never holds a device).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speech_emotion.features.devices import check_precision
from speech_emotion.inference.ray_engine import (
    DECODE_CPUS,
    RayOptions,
    actor_options,
    check_cluster_cpus,
    configure_data,
    connect,
    decode_batch,
    decoded_files,
    input_dataset,
)


class StoreFillWorker:
    """Ray actor: the encoder loaded once; batches of decoded files in, each one's store status out.

    Args:
        encoder: encoder folder, hub id, or ``"egemaps"`` (the same on every node).
        store_root: the feature store's folder (shared by every node).
        device, precision: as :func:`~speech_emotion.features.encoders.load_encoder`.
        threads: compute threads of this actor.
    """

    def __init__(self, encoder: str, store_root: str, device: str, precision: str, threads: int):
        os.environ.setdefault("SER_THREADS", str(threads))
        import torch

        from speech_emotion.features.encoders import load_encoder
        from speech_emotion.features.store import FeatureStore

        torch.set_num_threads(int(os.environ["SER_THREADS"]))
        self.encoder = load_encoder(encoder, device=device, precision=precision)
        self.store = FeatureStore(store_root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from speech_emotion.features.store_fill import store_statuses

        statuses, errors = store_statuses(self.encoder, decoded_files(batch), self.store)
        return {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "path": np.asarray(batch["path"], dtype=object),
            "status": np.asarray(statuses, dtype=object),
            "error": np.asarray([e or "" for e in errors], dtype=object),
            "device": np.asarray([str(self.encoder.device)] * len(statuses), dtype=object),
        }


def fill_store_with_ray(
    paths: Sequence[str | Path],
    *,
    encoder: str,
    store_root: str | Path,
    options: RayOptions = RayOptions(),
    device: str = "auto",
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
) -> Any:
    """``ser cache fill`` on a Ray cluster: decode in CPU tasks, encode in an actor pool, write the shared store.

    Args:
        paths: audio files.
        encoder: encoder folder, hub id, or ``"egemaps"``.
        store_root: the feature store's folder, on a file system every node shares.
        options, device, precision: as :func:`predict_with_ray`.
        progress: called with the number of files finished.

    Returns:
        A :class:`~speech_emotion.features.store_fill.FillSummary`.

    Raises:
        ImportError: Ray is not installed.
        ValueError: bad options, a refused precision, an encoder that does not load here.
        RuntimeError: the cluster returned a file twice or not at all.
    """
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.features.store_fill import FillSummary

    started = time.perf_counter()
    device = options.check(device)
    precision = check_precision(precision)
    store_root = str(Path(store_root).absolute())
    # On the driver, on the CPU: checks the encoder and gives its fingerprint before the cluster starts.
    local = load_encoder(encoder, device="cpu", precision=precision)
    summary = FillSummary(
        root=store_root,
        encoder=encoder,
        fingerprint=local.fingerprint,
        preprocessing=local.preprocessing,
        engine="ray",
        device=device,
    )
    del local
    if paths:
        ray = connect(options.address)
        check_cluster_cpus(ray, options, decoding=True)
        configure_data(ray)
        data = input_dataset(ray, paths, options.batch_size).map_batches(
            decode_batch,
            batch_size=options.batch_size,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
        )
        results = data.map_batches(
            StoreFillWorker,
            fn_constructor_args=(encoder, store_root, device, precision, options.threads),
            **actor_options(ray, options),
        )
        seen: set[int] = set()
        devices: set[str] = set()
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for index, path, status, error, where in zip(
                batch["index"], batch["path"], batch["status"], batch["error"], batch["device"]
            ):
                if int(index) in seen:
                    raise RuntimeError(f"the Ray pipeline returned {path} twice; rerun")
                seen.add(int(index))
                devices.add(str(where))
                summary.count(str(status), str(path), str(error) or None)
            if progress is not None:
                progress(len(batch["index"]))
        if len(seen) != len(paths):
            raise RuntimeError(f"the Ray pipeline returned {len(seen)} of {len(paths)} files; rerun")
        summary.device = ", ".join(sorted(devices)) or device
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary
