"""Tests of speech_emotion.features.store: the label-free, content-addressed feature store."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from speech_emotion.features import (
    FeatureStore,  # noqa: E402
    extract_features,  # noqa: E402
)

AUDIO = "a" * 64
FINGERPRINT = "f" * 64
PRE = {"sampling_rate": 16000, "pooling": "mean+std", "max_window_s": 30.0}


def make_key(**changes):
    arguments = {"audio_hash": AUDIO, "encoder_fingerprint": FINGERPRINT, "preprocessing": PRE, **changes}
    return FeatureStore.key(**arguments)


# --- keys ------------------------------------------------------------------------------------


def test_key_changes_with_every_input():
    key = make_key()
    fields = {"audio_hash": AUDIO, "encoder_fingerprint": FINGERPRINT, "format_version": 2, "preprocessing": PRE}
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert key == hashlib.sha256(payload.encode()).hexdigest()  # exactly these inputs, nothing else
    assert make_key() == key  # deterministic
    assert make_key(preprocessing=dict(reversed(list(PRE.items())))) == key  # key order does not matter
    others = [
        make_key(audio_hash="b" * 64),
        make_key(encoder_fingerprint="e" * 64),
        make_key(preprocessing={**PRE, "sampling_rate": 8000}),
        make_key(preprocessing={**PRE, "extra": True}),
    ]
    assert len({key, *others}) == 5


def test_key_changes_with_format_version(monkeypatch):
    key = make_key()
    monkeypatch.setattr(FeatureStore, "FORMAT_VERSION", FeatureStore.FORMAT_VERSION + 1)
    assert make_key() != key


def test_key_rejects_bad_input():
    with pytest.raises(ValueError, match="audio_hash: expected a non-empty str"):
        make_key(audio_hash="")
    with pytest.raises(ValueError, match="preprocessing: expected JSON-able values"):
        make_key(preprocessing={"window": np.hanning})
    with pytest.raises(ValueError, match="preprocessing: expected a dict"):
        make_key(preprocessing=[1, 2])


def test_malformed_key_is_refused(tmp_path):
    store = FeatureStore(tmp_path)
    for bad in ["../../etc/passwd", "A" * 64, "abc", ""]:
        with pytest.raises(ValueError, match="expected 64 lowercase hex digits"):
            store.get(bad)


# --- entries ---------------------------------------------------------------------------------


def test_roundtrip_keeps_dtype_and_shape(tmp_path):
    store = FeatureStore(tmp_path)
    pooled = np.random.default_rng(0).standard_normal((7, 1024)).astype(np.float32)
    frames = np.random.default_rng(1).standard_normal((7, 150, 512)).astype(np.float16)
    key_pooled, key_frames = make_key(), make_key(audio_hash="b" * 64)
    assert store.get(key_pooled) is None and key_pooled not in store
    store.put(key_pooled, pooled)
    store.put(key_frames, frames)
    assert key_pooled in store
    for key, expected in [(key_pooled, pooled), (key_frames, frames)]:
        got = store.get(key)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    # sharded by key prefix
    assert store.path(key_pooled) == tmp_path / key_pooled[:2] / f"{key_pooled}.npy"
    assert store.get_many([key_pooled, make_key(audio_hash="c" * 64)])[1] is None


def test_put_replaces_an_entry(tmp_path):
    store = FeatureStore(tmp_path)
    store.put_many({make_key(): np.zeros(3, np.float32)})
    store.put_many([(make_key(), np.ones(3, np.float32))])
    np.testing.assert_array_equal(store.get(make_key()), np.ones(3))
    assert store.info()["n_entries"] == 1


def test_no_pickle(tmp_path):
    store = FeatureStore(tmp_path)
    with pytest.raises(ValueError, match="expected a numeric array"):
        store.put(make_key(), np.array([{"label": "angry"}], dtype=object))
    with pytest.raises(ValueError, match="expected a numeric array"):
        store.put(make_key(), np.array(["angry"]))
    store.put(make_key(), np.ones((2, 4), np.float32))
    path = store.path(make_key())
    assert path.read_bytes()[:6] == b"\x93NUMPY"
    assert np.load(path, allow_pickle=False).shape == (2, 4)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.tmp"))


def test_info_and_clear(tmp_path):
    store = FeatureStore(tmp_path / "store")
    assert store.info() == {"root": str(tmp_path / "store"), "n_entries": 0, "bytes": 0}
    for i in range(5):
        store.put(make_key(audio_hash=f"{i:064x}"), np.zeros((7, 16), np.float32))
    info = store.info()
    assert info["n_entries"] == 5 and info["bytes"] > 5 * 7 * 16 * 4
    assert store.clear() == 5
    assert store.info()["n_entries"] == 0
    assert store.clear() == 0
    assert store.get(make_key(audio_hash=f"{0:064x}")) is None


def test_unreadable_entry_is_a_miss(tmp_path, caplog):
    store = FeatureStore(tmp_path)
    store.put(make_key(), np.ones((7, 1024), np.float32))
    path = store.path(make_key())
    path.write_bytes(path.read_bytes()[:200])  # cut short, as by a full disk
    assert store.get(make_key()) is None
    assert "damaged feature-store entry" in caplog.text


def test_a_damaged_entry_is_a_miss_and_is_recomputed(tmp_path, caplog):
    # What a power cut can leave: the entry's file with its size but zeros for content.
    store = FeatureStore(tmp_path)
    store.put(make_key(), np.ones((7, 16), np.float32))
    path = store.path(make_key())
    path.write_bytes(bytes(path.stat().st_size))
    assert store.get(make_key()) is None and "damaged feature-store entry" in caplog.text

    class Ones:
        fingerprint, preprocessing, n_layers, dim = FINGERPRINT, PRE, 7, 16

        def features(self, signals, *, batch_seconds=None, progress=None):
            return [np.ones((7, 16), np.float32) for _ in signals]

    features = extract_features(Ones(), [np.zeros(16000, np.float32)], [AUDIO], store)
    assert features.shape == (1, 7, 16) and np.array_equal(store.get(make_key()), np.ones((7, 16), np.float32))


def test_entries_are_flushed_to_disk_with_their_folder(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    store = FeatureStore(tmp_path)
    store.put(make_key(), np.ones((2, 2), np.float32))
    path = store.path(make_key())
    assert len(flushed) == 2 and Path(flushed[0]).parent == path.parent and flushed[0].endswith(".tmp")
    assert flushed[1] == str(path.parent)  # the rename, not only the bytes


def test_clearing_the_store_while_an_entry_is_written_does_not_fail_the_write(tmp_path, monkeypatch):
    # `ser cache clear` in another process removes the (empty) shard folder between mkdir and the write.
    store = FeatureStore(tmp_path)
    real_mkstemp = tempfile.mkstemp
    cleared = []

    def mkstemp_after_a_clear(*args, **kwargs):
        if not cleared:
            cleared.append(FeatureStore(tmp_path).clear())
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_after_a_clear)
    store.put(make_key(), np.ones((3, 3), np.float32))
    assert cleared == [0] and np.array_equal(store.get(make_key()), np.ones((3, 3), np.float32))


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SER_CACHE", str(tmp_path / "cache"))
    assert FeatureStore().root == tmp_path / "cache"
    monkeypatch.delenv("SER_CACHE")
    root = FeatureStore().root
    assert root.name == "features" and "speech-emotion" in str(root)


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from speech_emotion.features.store import FeatureStore

    import time
    from pathlib import Path

    store = FeatureStore(sys.argv[1])
    # start together: each announces itself, then waits for the other
    Path(sys.argv[1] + f".ready-{sys.argv[3]}").touch()
    deadline = time.time() + 60
    while len(list(Path(sys.argv[1]).parent.glob("*.ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    keys = [FeatureStore.key(audio_hash=f"{i:064x}", encoder_fingerprint="f" * 64, preprocessing={})
            for i in range(int(sys.argv[2]))]
    rng = np.random.default_rng(int(sys.argv[3]))
    for _ in range(3):
        for i in rng.permutation(len(keys)):
            store.put(keys[i], np.full((7, 256), i, dtype=np.float32))
            other = store.get(keys[rng.integers(len(keys))])  # read while the other writes
            assert other is None or (other.shape == (7, 256) and np.unique(other).size == 1), other
    """
)


def test_two_processes_writing_the_same_keys(tmp_path):
    n_keys = 150
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "store"
    writers = [
        subprocess.Popen([sys.executable, str(script), str(root), str(n_keys), str(seed)], stderr=subprocess.PIPE)
        for seed in (1, 2)
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr.decode()
    store = FeatureStore(root)
    assert store.info()["n_entries"] == n_keys
    for i in range(n_keys):
        key = FeatureStore.key(audio_hash=f"{i:064x}", encoder_fingerprint="f" * 64, preprocessing={})
        np.testing.assert_array_equal(store.get(key), np.full((7, 256), i, dtype=np.float32))
    assert not list(Path(root).rglob("*.tmp"))


# --- extract_features --------------------------------------------------------------------------


class CountingEncoder:
    """A minimal encoder: per-layer mean and max of the signal; counts what it computes."""

    fingerprint = "c" * 64
    preprocessing = {"sampling_rate": 16000, "pooling": "mean+max"}
    n_layers = 2
    dim = 2

    def __init__(self):
        self.n_computed = 0

    def features(self, signals, *, batch_seconds=None, progress=None):
        self.n_computed += len(signals)
        out = [np.array([[s.mean(), s.max()], [2 * s.mean(), 2 * s.max()]], dtype=np.float32) for s in signals]
        if progress is not None:
            progress(len(signals))
        return out


def loaders(values, loaded):
    def make(value):
        def load():
            loaded.append(value)
            return np.full(1600, value, dtype=np.float32)

        return load

    return [make(v) for v in values]


def test_extract_features_warm_cache_loads_nothing(tmp_path):
    store = FeatureStore(tmp_path)
    encoder = CountingEncoder()
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    hashes = [f"{i:064x}" for i in range(5)]
    loaded, steps = [], []
    cold = extract_features(encoder, loaders(values, loaded), hashes, store, progress=steps.append, chunk_size=2)
    assert cold.shape == (5, 2, 2) and cold.dtype == np.float32
    np.testing.assert_allclose(cold[:, 0, 0], values, rtol=1e-6)
    assert sorted(loaded) == values and encoder.n_computed == 5 and sum(steps) == 5
    assert store.info()["n_entries"] == 5

    loaded.clear()
    steps.clear()
    warm = extract_features(encoder, loaders(values, loaded), hashes, store, progress=steps.append)
    np.testing.assert_array_equal(warm, cold)
    assert loaded == [] and encoder.n_computed == 5 and steps == [5]


def test_extract_features_mixes_cached_and_new(tmp_path):
    store = FeatureStore(tmp_path)
    encoder = CountingEncoder()
    extract_features(encoder, [np.full(1600, 0.1, np.float32)], ["0" * 64], store)
    loaded = []
    # plain arrays and loaders mix; a duplicate hash is computed once
    signals = [np.full(1600, 0.1, np.float32), *loaders([0.2, 0.2], loaded)]
    steps = []
    result = extract_features(encoder, signals, ["0" * 64, "1" * 64, "1" * 64], store, progress=steps.append)
    np.testing.assert_allclose(result[:, 0, 0], [0.1, 0.2, 0.2], rtol=1e-6)
    assert loaded == [0.2] and encoder.n_computed == 2 and sum(steps) == 3


def test_extract_features_without_store():
    encoder = CountingEncoder()
    result = extract_features(encoder, [np.ones(10, np.float32)] * 2, ["0" * 64, "1" * 64], None)
    assert result.shape == (2, 2, 2) and encoder.n_computed == 2
    assert extract_features(encoder, [], [], None).shape == (0, 2, 2)


def test_extract_features_checks_lengths():
    with pytest.raises(ValueError, match="got 1 audio hashes for 2 signals"):
        extract_features(CountingEncoder(), [np.ones(10)] * 2, ["0" * 64], None)


def test_extract_features_names_the_bad_item():
    signals = [np.ones(10, np.float32), lambda: np.ones((10, 2), np.float32)]
    with pytest.raises(ValueError, match=r"signals\[1\] \(audio hash 1{64}\): expected a 1-D array"):
        extract_features(CountingEncoder(), signals, ["0" * 64, "1" * 64], None)


def test_extract_features_recomputes_a_wrong_shape(tmp_path):
    store = FeatureStore(tmp_path)
    encoder = CountingEncoder()
    key = FeatureStore.key(
        audio_hash="0" * 64, encoder_fingerprint=encoder.fingerprint, preprocessing=encoder.preprocessing
    )
    store.put(key, np.zeros((3, 3), np.float32))
    result = extract_features(encoder, [np.ones(10, np.float32)], ["0" * 64], store)
    assert encoder.n_computed == 1 and result[0, 0, 0] == 1.0
    assert store.get(key).shape == (2, 2)


def save_tiny_wav2vec2(folder, *, seed):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    torch.manual_seed(seed)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


def test_extract_features_with_a_real_encoder(tmp_path):
    """End to end with a tiny random wav2vec 2.0 saved and loaded through load_encoder."""
    from speech_emotion.features import load_encoder

    encoder = load_encoder(save_tiny_wav2vec2(tmp_path / "model", seed=0))
    rng = np.random.default_rng(0)
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (1600, 3200, 2400)]
    store = FeatureStore(tmp_path / "store")
    result = extract_features(encoder, signals, [f"{i:064x}" for i in range(3)], store)
    assert result.shape == (3, encoder.n_layers, encoder.dim)
    for row, expected in zip(result, encoder.features(signals)):
        np.testing.assert_allclose(row, expected, atol=1e-5)
    # same audio, other encoder configuration: a new key, never a silent reuse
    other = load_encoder(save_tiny_wav2vec2(tmp_path / "other", seed=1))
    extract_features(other, signals, [f"{i:064x}" for i in range(3)], store)
    assert store.info()["n_entries"] == 6


# --- frame-level states for fine-tuning ------------------------------------------------------


def test_frame_states_are_cached_in_float16_beside_the_pooled_features(tmp_path, monkeypatch):
    """extract_frame_states: one forward pass fills both entries; a warm store decodes and encodes nothing."""
    from typer.testing import CliRunner

    from speech_emotion.cli.app import app
    from speech_emotion.features import extract_frame_states, load_encoder
    from speech_emotion.features.store import frame_states_key

    encoder = load_encoder(save_tiny_wav2vec2(tmp_path / "model", seed=0))
    rng = np.random.default_rng(0)
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (1600, 3200, 2400)]
    hashes = [f"{i:064x}" for i in range(3)]
    store = FeatureStore(tmp_path / "store")
    # A pooled entry already in the store is kept as it is (the frozen statistics come from the store).
    pooled_key = FeatureStore.key(
        audio_hash=hashes[0], encoder_fingerprint=encoder.fingerprint, preprocessing=encoder.preprocessing
    )
    sentinel = np.full((encoder.n_layers, encoder.dim), 7.0, dtype=np.float32)
    store.put(pooled_key, sentinel)

    states, pooled = extract_frame_states(encoder, signals, hashes, store, top=1)
    reference = encoder.frozen_states(signals, top=1)
    assert pooled.dtype == np.float32 and pooled.shape == (3, encoder.n_layers, encoder.dim)
    np.testing.assert_array_equal(pooled[0], sentinel)
    np.testing.assert_allclose(pooled[1:], np.stack(encoder.features(signals[1:])), atol=1e-5)
    for frames, (expected, _) in zip(states, reference):
        assert frames.dtype == np.float16 and frames.shape == expected.shape
        np.testing.assert_allclose(frames.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    assert [s.shape[0] for s in states] == [sum(encoder.window_frames(len(x))) for x in signals]

    # Keyed by audio, encoder, preprocessing, format version, plus the state index and the dtype.
    key = frame_states_key(encoder, hashes[1], top=1)
    assert store.path(key, kind="frames").name == f"{key}.frames.npy"
    assert key not in {
        pooled_key,
        frame_states_key(encoder, hashes[1], top=2),
        frame_states_key(encoder, hashes[1], top=1, dtype="float32"),
    }
    info = store.info()
    assert info["n_entries"] == 6 and info["frames"]["n_entries"] == 3
    assert info["frames"]["bytes"] == sum(
        store.path(frame_states_key(encoder, h, top=1), kind="frames").stat().st_size for h in hashes
    )

    def refuse(*args, **kwargs):
        raise AssertionError("a warm store must not encode")

    monkeypatch.setattr(encoder, "frozen_states", refuse)
    loaders = [lambda: (_ for _ in ()).throw(AssertionError("a warm store must not decode")) for _ in signals]
    warm_states, warm_pooled = extract_frame_states(encoder, loaders, hashes, store, top=1)
    np.testing.assert_array_equal(warm_pooled, pooled)
    assert all(np.array_equal(a, b) for a, b in zip(warm_states, states))

    # `ser cache info` counts them apart, `ser cache clear` removes them with the rest.
    monkeypatch.setenv("SER_CACHE", str(store.root))
    runner = CliRunner()
    shown = runner.invoke(app, ["cache", "info"])
    assert (
        shown.exit_code == 0 and "entries: 6" in shown.stderr and "fine-tune frame states: 3 entries" in shown.stderr
    ), shown.stderr
    cleared = runner.invoke(app, ["cache", "clear", "--yes"])
    assert cleared.exit_code == 0 and "removed 6 entries" in cleared.stderr
    assert store.info() == {"root": str(store.root), "n_entries": 0, "bytes": 0}


def test_frame_store_refuses_unknown_kinds(tmp_path):
    store = FeatureStore(tmp_path)
    with pytest.raises(ValueError, match="kind: expected one of 'features', 'frames', got 'states'"):
        store.path("0" * 64, kind="states")
