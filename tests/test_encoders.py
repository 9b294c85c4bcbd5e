"""Tests of speech_emotion.features.encoders, offline.

SSL models are tiny, randomly initialised configurations saved with ``save_pretrained`` and
loaded back through ``load_encoder`` (no mocks). Whisper tests use the real whisper-tiny.en
encoder from the shared models folder (``$SER_SHARED`` or ``../shared`` beside the repository)
and are skipped when it is absent.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from speech_emotion.features import (
    SSLEncoder,  # noqa: E402
    WhisperEncoder,  # noqa: E402
    load_encoder,  # noqa: E402
)

SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
WHISPER_TINY = SHARED / "models" / "whisper-tiny.en-encoder"
RAVDESS = SHARED / "data" / "ravdess-speech-16k"

needs_whisper = pytest.mark.skipif(
    not (WHISPER_TINY / "model.safetensors").is_file(),
    reason=f"whisper-tiny.en encoder not found at {WHISPER_TINY}; set SER_SHARED to the shared folder",
)


def noise(n_samples, seed=0):
    """Speech-like test signal: a few harmonics plus noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    signal = 0.3 * np.sin(2 * np.pi * (150 + 20 * seed) * t) + 0.1 * np.sin(2 * np.pi * 450 * t)
    return (signal + 0.05 * rng.standard_normal(n_samples)).astype(np.float32)


# --- tiny SSL models ------------------------------------------------------------------------

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=(32, 32),
    conv_stride=(5, 4),
    conv_kernel=(10, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
MIN_SAMPLES = 45  # (1 - 1) * 4 + 8 = 8 frames of the first conv; (8 - 1) * 5 + 10 = 45 samples


def save_tiny_ssl(folder, kind, seed=0, **overrides):
    """Save a tiny random SSL model of ``kind`` and its feature extractor into ``folder``."""
    import transformers

    kinds = {
        "wav2vec2-layer": (
            "Wav2Vec2Config",
            "Wav2Vec2Model",
            dict(feat_extract_norm="layer", do_stable_layer_norm=True),
        ),
        "wav2vec2-group": ("Wav2Vec2Config", "Wav2Vec2Model", dict(feat_extract_norm="group")),
        "hubert": ("HubertConfig", "HubertModel", dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
        "wavlm": (
            "WavLMConfig",
            "WavLMModel",
            dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=8, max_bucket_distance=20),
        ),
        "data2vec-audio": (
            "Data2VecAudioConfig",
            "Data2VecAudioModel",
            dict(num_conv_pos_embeddings=3, conv_pos_kernel_size=5),
        ),
    }
    config_name, model_name, extra = kinds[kind]
    settings = {**SMALL, **extra, **overrides}
    config = getattr(transformers, config_name)(**settings)
    torch.manual_seed(seed)
    getattr(transformers, model_name)(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=settings.get("feat_extract_norm") == "layer"
    ).save_pretrained(folder)
    return Path(folder)


SSL_KINDS = ["wav2vec2-layer", "wav2vec2-group", "hubert", "wavlm", "data2vec-audio"]


@pytest.fixture(scope="module", params=SSL_KINDS)
def ssl_folder(request, tmp_path_factory):
    return save_tiny_ssl(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def wav2vec2_folder(tmp_path_factory):
    return save_tiny_ssl(tmp_path_factory.mktemp("w2v"), "wav2vec2-layer")


def test_ssl_shapes(ssl_folder):
    encoder = load_encoder(str(ssl_folder))
    assert isinstance(encoder, SSLEncoder)
    assert encoder.family == "ssl"
    assert encoder.reference == str(ssl_folder)
    assert (encoder.n_layers, encoder.dim, encoder.hidden_size) == (3, 64, 32)
    assert encoder.sampling_rate == 16000
    assert encoder.min_samples == MIN_SAMPLES
    features = encoder.features([noise(1600), noise(4000, seed=1)])
    assert [f.shape for f in features] == [(3, 64), (3, 64)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in features)
    frames = encoder.frames(noise(4000, seed=1))
    assert frames.dtype == np.float32
    assert frames.shape == (3, 198, 32)  # (4000 - 10) // 5 + 1 = 799; (799 - 8) // 4 + 1 = 198
    # pooled features are the mean and std over the frames
    np.testing.assert_allclose(features[1][:, :32], frames.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(features[1][:, 32:], frames.std(axis=1), atol=1e-5)


def test_ssl_batched_equals_one_by_one(ssl_folder):
    encoder = load_encoder(str(ssl_folder))
    signals = [noise(n, seed=i) for i, n in enumerate([1600, 4000, 2345, 801, 4000, 1600])]
    alone = [encoder.features([s])[0] for s in signals]
    together = encoder.features(signals)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_ssl_padding_policy(tmp_path):
    """Models that normalise over time, or leak padding, are never batched with padding."""
    padding = {kind: load_encoder(save_tiny_ssl(tmp_path / kind, kind)).preprocessing["padding"] for kind in SSL_KINDS}
    assert padding == {
        "wav2vec2-layer": "masked",
        "wav2vec2-group": "none",
        "hubert": "masked",
        "wavlm": "masked",
        "data2vec-audio": "none",
    }


def test_ssl_long_input_is_windowed(wav2vec2_folder):
    encoder = load_encoder(wav2vec2_folder)
    fingerprint = encoder.fingerprint
    encoder.max_window_s = 0.25  # 4000 samples per window, to keep the test small
    assert encoder.preprocessing["max_window_s"] == 0.25
    assert encoder.fingerprint == fingerprint  # the model is the same; the store key changes
    frames = encoder.frames(noise(10000))
    assert frames.shape[0] == 3
    # 3 windows of 3334, 3334 and 3332 samples
    assert frames.shape[1] == 3 * ((((3332 - 10) // 5 + 1) - 8) // 4 + 1)
    assert encoder.features([noise(10000)])[0].shape == (3, 64)


def test_fingerprint_same_for_a_copied_folder(wav2vec2_folder, tmp_path):
    copy = shutil.copytree(wav2vec2_folder, tmp_path / "elsewhere" / "copy")
    original = load_encoder(str(wav2vec2_folder))
    copied = load_encoder(str(copy))
    assert len(original.fingerprint) == 64
    assert copied.fingerprint == original.fingerprint
    assert copied.preprocessing == original.preprocessing


def test_fingerprint_changes_with_weights_or_config(wav2vec2_folder, tmp_path):
    original = load_encoder(wav2vec2_folder).fingerprint
    other_weights = save_tiny_ssl(tmp_path / "seed1", "wav2vec2-layer", seed=1)
    other_config = save_tiny_ssl(tmp_path / "eps", "wav2vec2-layer", layer_norm_eps=1e-3)
    assert load_encoder(other_weights).fingerprint != original
    assert load_encoder(other_config).fingerprint != original


def test_fingerprint_ignores_parameters_missing_from_the_checkpoint(tmp_path):
    """masked_spec_embed (training only) is absent from some checkpoints and then random."""
    from safetensors.torch import load_file, save_file

    folder = save_tiny_ssl(tmp_path, "wav2vec2-layer", mask_time_prob=0.05)
    weights = load_file(folder / "model.safetensors")
    assert weights.pop("masked_spec_embed", None) is not None
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert load_encoder(folder).fingerprint == load_encoder(folder).fingerprint


def test_signal_checks(wav2vec2_folder):
    encoder = load_encoder(wav2vec2_folder)
    with pytest.raises(ValueError, match=r"signals\[1\]: expected a 1-D array"):
        encoder.features([noise(1600), np.zeros((1600, 2), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"signals\[0\]: expected at least 45 samples"):
        encoder.features([noise(44)])
    with pytest.raises(ValueError, match=r"signals\[0\]: expected at least"):
        encoder.features([np.zeros(0, dtype=np.float32)])
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        encoder.features([np.array([0.1, np.nan, np.inf] + [0.0] * 100, dtype=np.float32)])
    with pytest.raises(ValueError, match="expected float samples"):
        encoder.features([np.zeros(1600, dtype=np.int16)])
    assert encoder.features([]) == []
    # float64 input is accepted and converted
    assert encoder.features([noise(1600).astype(np.float64)])[0].dtype == np.float32


def test_what_exports_read_from_an_ssl_encoder(wav2vec2_folder, tmp_path):
    from speech_emotion.features.signal import ssl_frames

    encoder = load_encoder(wav2vec2_folder)
    assert encoder.can_pad and encoder.preprocessing["padding"] == "masked"
    group = load_encoder(save_tiny_ssl(tmp_path / "group", "wav2vec2-group"))
    assert not group.can_pad and group.preprocessing["padding"] == "none"
    assert type(encoder.module).__name__ == "Wav2Vec2Model" and encoder.module.config.hidden_size == 32
    assert type(encoder.feature_extractor).__name__ == "Wav2Vec2FeatureExtractor"
    assert encoder.feature_extractor.do_normalize
    lengths = [MIN_SAMPLES, 4000, 16000]
    assert encoder.frame_lengths(torch.tensor(lengths)).tolist() == [1, 198, 798]
    assert [ssl_frames(n, SMALL["conv_kernel"], SMALL["conv_stride"]) for n in lengths] == [1, 198, 798]


def test_progress_counts_every_signal(wav2vec2_folder):
    encoder = load_encoder(wav2vec2_folder)
    calls = []
    encoder.features([noise(n) for n in (800, 1600, 2400, 3200)], batch_seconds=0.25, progress=calls.append)
    assert sum(calls) == 4 and len(calls) > 1


# --- loading errors ---------------------------------------------------------------------------


def test_missing_folder_is_file_not_found():
    with pytest.raises(FileNotFoundError, match=r"\./no/such/folder: no such folder; pass a local folder such as"):
        load_encoder("./no/such/folder")


def test_hub_id_not_available_offline():
    expected = r"nobody/no-such-model-xyz: not an existing folder, and not a Hugging Face model available offline"
    with pytest.raises(ValueError, match=expected):
        load_encoder("nobody/no-such-model-xyz")


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="expected config.json in this folder"):
        load_encoder(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="got a file"):
        load_encoder(tmp_path / "weights.bin")


def test_unsupported_model_type(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'bert' is not a supported speech encoder; expected 'whisper'"):
        load_encoder(tmp_path)


def test_missing_weights_are_an_error(tmp_path):
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    Wav2Vec2Config(**SMALL).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor().save_pretrained(tmp_path)
    save_file({"unrelated.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="are missing from the checkpoint"):
        load_encoder(tmp_path)


def test_bad_device(wav2vec2_folder):
    with pytest.raises(ValueError, match="device: expected auto"):
        load_encoder(wav2vec2_folder, device="gpu-please")


# --- Whisper -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_tiny():
    return load_encoder(str(WHISPER_TINY))


@needs_whisper
def test_whisper_attributes(whisper_tiny):
    assert isinstance(whisper_tiny, WhisperEncoder)
    assert whisper_tiny.family == "whisper"
    assert (whisper_tiny.n_layers, whisper_tiny.dim, whisper_tiny.hidden_size) == (5, 768, 384)
    assert whisper_tiny.preprocessing["max_window_s"] == 30.0
    assert len(whisper_tiny.fingerprint) == 64


@needs_whisper
def test_whisper_variable_length(whisper_tiny):
    signal = noise(48000)  # 3 s: 300 mel frames, 150 positions instead of 1500
    frames = whisper_tiny.frames(signal)
    assert frames.shape == (5, 150, 384)
    (features,) = whisper_tiny.features([signal])
    assert features.shape == (5, 768) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, :384], frames.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(features[:, 384:], frames.std(axis=1), atol=1e-5)
    assert whisper_tiny.frames(noise(16001)).shape == (5, 51, 384)  # 101 mel frames -> 51 positions


@needs_whisper
def test_whisper_batched_equals_alone(whisper_tiny):
    short, long, odd = noise(48000), noise(80000, seed=1), noise(33333, seed=2)
    (alone,) = whisper_tiny.features([short])
    (alone_odd,) = whisper_tiny.features([odd])
    batched = whisper_tiny.features([long, short, odd])
    np.testing.assert_allclose(batched[1], alone, atol=1e-4)
    np.testing.assert_allclose(batched[2], alone_odd, atol=1e-4)
    assert not np.allclose(batched[0], alone, atol=1e-2)  # the order of results is the input order


@needs_whisper
def test_whisper_log_mel_equals_feature_extractor(whisper_tiny):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(WHISPER_TINY)
    clips = sorted(RAVDESS.glob("Actor_01/*.flac"))[:1]
    if clips:
        import soundfile as sf

        signal, _ = sf.read(clips[0], dtype="float32", always_2d=True)
        signal = signal.mean(axis=1)
    else:
        signal = noise(52345)
    padded = extractor(signal, sampling_rate=16000, return_tensors="np")["input_features"][0]
    mine = whisper_tiny.log_mel(signal).numpy()
    assert mine.shape == (80, int(np.ceil(len(signal) / 160)))
    np.testing.assert_allclose(mine, padded[:, : mine.shape[1]], atol=1e-5)


@needs_whisper
def test_whisper_mel_filters_are_the_feature_extractors(whisper_tiny):
    from transformers import WhisperFeatureExtractor

    expected = np.asarray(WhisperFeatureExtractor.from_pretrained(WHISPER_TINY).mel_filters, dtype=np.float32)
    filters = whisper_tiny.mel_filters
    assert filters.dtype == np.float32 and filters.shape == (201, 80)
    np.testing.assert_array_equal(filters, expected)
    filters[:] = 0  # a copy: the encoder keeps its own
    np.testing.assert_array_equal(whisper_tiny.mel_filters, expected)
    assert whisper_tiny.can_pad and whisper_tiny.feature_extractor.feature_size == 80


@needs_whisper
def test_whisper_forward_equals_transformers_on_30_s(whisper_tiny):
    """On a full 30 s input the hand-written forward is transformers' own encoder."""
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    extractor = WhisperFeatureExtractor.from_pretrained(WHISPER_TINY)
    mel = extractor(noise(480000), sampling_rate=16000, return_tensors="pt")["input_features"]
    stock = WhisperForAudioClassification.from_pretrained(WHISPER_TINY).encoder.eval()
    with torch.inference_mode():
        expected = torch.stack(stock(mel, output_hidden_states=True).hidden_states, dim=1)[0].numpy()
    (mine,) = whisper_tiny._encode_mels([mel[0]])
    assert mine.shape == expected.shape == (5, 1500, 384)
    np.testing.assert_allclose(mine, expected, atol=1e-4)


@needs_whisper
def test_whisper_input_over_30_s_is_windowed(whisper_tiny):
    signal = noise(35 * 16000)  # two windows of 17.5 s: 1750 mel frames, 875 positions each
    (features,) = whisper_tiny.features([signal])
    assert features.shape == (5, 768) and np.isfinite(features).all()
    assert whisper_tiny.frames(signal).shape == (5, 1750, 384)


@needs_whisper
def test_whisper_fingerprint_same_for_a_copied_folder(whisper_tiny, tmp_path):
    copy = shutil.copytree(WHISPER_TINY, tmp_path / "copy")
    assert load_encoder(copy).fingerprint == whisper_tiny.fingerprint


def test_whisper_full_seq2seq_checkpoint(tmp_path):
    """Hub checkpoints such as openai/whisper-base hold model.encoder.* and a decoder."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        vocab_size=100,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    WhisperFeatureExtractor().save_pretrained(tmp_path)
    encoder = load_encoder(tmp_path)
    expected = model.model.encoder.state_dict()
    loaded = encoder.module.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert (encoder.n_layers, encoder.dim) == (3, 64)
    signals = [noise(16000), noise(24000, seed=1)]
    alone = [encoder.features([s])[0] for s in signals]
    for a, b in zip(alone, encoder.features(signals)):
        np.testing.assert_allclose(a, b, atol=1e-4)


# --- eGeMAPS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def egemaps():
    pytest.importorskip("opensmile", reason="opensmile is not installed (pip install 'speech-emotion[egemaps]')")
    return load_encoder("egemaps")


def test_egemaps_functionals(egemaps):
    assert (egemaps.family, egemaps.n_layers, egemaps.dim) == ("egemaps", 1, 88)
    assert len(egemaps.feature_names) == 88
    features = egemaps.features([noise(16000), np.zeros(16000, dtype=np.float32)])
    assert [f.shape for f in features] == [(1, 88), (1, 88)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in features)
    assert load_encoder("egemaps").fingerprint == egemaps.fingerprint


def test_egemaps_short_input(egemaps):
    with pytest.raises(ValueError, match=r"signals\[0\]: expected at least 960 samples \(0.060 s"):
        egemaps.features([noise(959)])
    (features,) = egemaps.features([noise(960)])  # shortest input openSMILE fills in
    assert features.shape == (1, 88) and np.isfinite(features).all()


def test_egemaps_has_no_frames(egemaps):
    with pytest.raises(NotImplementedError, match="no frame-level hidden states"):
        egemaps.frames(noise(16000))


def test_egemaps_has_the_frozen_api_only(egemaps):
    from speech_emotion.features.encoders import FinetunableEncoder, check_finetunable

    assert not isinstance(egemaps, FinetunableEncoder)
    finetuning = ["top_layers", "pooled_features", "frozen_states", "top_pooled_features", "window_frames"]
    finetuning += ["frozen_state_index", "module", "save_pretrained", "n_transformer_layers", "feature_extractor"]
    assert [name for name in finetuning if hasattr(egemaps, name)] == []
    expected = (
        "encoder 'egemaps' (egemaps) has no trainable layers: nothing to fine-tune; "
        "fine-tune a Whisper or wav2vec 2.0-family encoder, or train the head alone (no --finetune)"
    )
    with pytest.raises(ValueError) as raised:
        check_finetunable(egemaps)
    assert str(raised.value) == expected


def test_ssl_with_adapter_pools_encoder_frames(tmp_path):
    """An adapter shortens only the last output; hidden states keep the encoder's frame rate."""
    folder = save_tiny_ssl(tmp_path, "wav2vec2-layer", add_adapter=True, adapter_stride=2, num_adapter_layers=1)
    encoder = load_encoder(folder)
    assert encoder.frames(noise(4000)).shape == (3, 198, 32)
    signals = [noise(4000), noise(2000, seed=1)]
    alone = [encoder.features([s])[0] for s in signals]
    for a, b in zip(alone, encoder.features(signals)):
        np.testing.assert_allclose(a, b, atol=1e-4)
