"""Decoding ahead in worker threads: results in input order, unreadable files as error rows in their place."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import tone
from speech_emotion.data.prefetch import decode_ahead, map_ahead
from speech_emotion.inference.predictor import Predictor


def test_order_is_kept_whatever_finishes_first():
    def slow_for_early_items(x: int) -> tuple[int, str]:
        time.sleep(0.002 * (20 - x))
        return x, threading.current_thread().name

    results = list(map_ahead(slow_for_early_items, range(20), workers=4, ahead=6))
    assert [x for x, _ in results] == list(range(20))
    assert len({name for _, name in results}) > 1  # several threads did the work


def test_an_exception_comes_in_its_turn():
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    results = map_ahead(fail_on_three, range(6), workers=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(results)


def test_items_are_read_lazily_and_a_closed_iterator_stops():
    taken = []

    def items():
        for i in range(1000):
            taken.append(i)
            yield i

    results = map_ahead(lambda x: x, items(), workers=2, ahead=4)
    assert next(results) == 0
    results.close()
    assert len(taken) <= 6  # never more than `ahead` (and the next one) in flight


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers: expected at least 1"):
        list(map_ahead(str, [1], workers=0))
    with pytest.raises(ValueError, match="ahead: expected at least 1"):
        list(map_ahead(str, [1], ahead=0))


@pytest.fixture
def mixed_files(tmp_path):
    """Good clips (several rates, so some are resampled) with unreadable and missing files in between."""
    files = []
    for i in range(12):
        if i % 4 == 1:
            bad = tmp_path / f"bad{i}.wav"
            bad.write_bytes(b"not audio")
            files.append(bad)
        elif i % 4 == 3:
            files.append(tmp_path / f"gone{i}.wav")
        else:
            files.append(
                tone(tmp_path / f"clip{i}.wav", freq=100.0 + 10 * i, seconds=0.3, sampling_rate=(16000, 44100)[i % 2])
            )
    return files


def test_decode_ahead_keeps_order_and_error_rows(mixed_files):
    decoded = list(decode_ahead(mixed_files, workers=3, ahead=4))
    assert [d.path for d in decoded] == [str(p) for p in mixed_files]
    for i, d in enumerate(decoded):
        if i % 4 == 3:
            assert d.signal is None and d.error == "file not found"
        elif i % 4 == 1:
            assert d.signal is None and "cannot decode" in d.error
        else:
            assert d.error is None and d.signal.dtype == np.float32 and len(d.signal) == pytest.approx(4800, abs=2)


class _FrequencyPredictor(Predictor):
    """A stand-in model whose 'probability' is each clip's dominant frequency: rows can be matched to files."""

    classes = ["frequency"]

    def __init__(self):
        pass

    def _forward(self, signals, speaker=None):
        return np.array([[np.argmax(np.abs(np.fft.rfft(s))) * 16000 / len(s)] for s in signals])


def test_predict_files_keeps_input_order_with_bad_files_mixed_in(mixed_files):
    rows = list(_FrequencyPredictor().predict_files(mixed_files, batch_size=3, decode_workers=4))
    assert [row["path"] for row in rows] == [str(p) for p in mixed_files]
    for i, row in enumerate(rows):
        if i % 4 == 3:
            assert row["error"] == "file not found"
        elif i % 4 == 1:
            assert "cannot decode" in row["error"]
        else:
            assert row["probabilities"]["frequency"] == pytest.approx(100.0 + 10 * i, abs=4)
