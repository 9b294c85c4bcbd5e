"""Fine-tune mode (`ser train --finetune top-N`) and its torchrun/DDP path, on tiny models and synthetic clips."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from speech_emotion import Predictor
from speech_emotion.cli.app import app
from speech_emotion.data.audio import load_audio
from speech_emotion.data.dataset import load_dataset
from speech_emotion.errors import BundleError
from speech_emotion.features.encoders import load_encoder
from speech_emotion.inference.evaluate import evaluate
from speech_emotion.model.calibration import softmax
from speech_emotion.model.head import predict_logits
from speech_emotion.model.metadata import BundleMeta, EncoderRef
from speech_emotion.training.config import TrainConfig, parse_finetune
from speech_emotion.training.finetune import fit_finetune, save_finetuned_bundle, unfreeze_top
from speech_emotion.training.pipeline import make_split, resume, train

sys.path.insert(0, str(Path(__file__).parent))
import ddp_finetune_worker as worker  # noqa: E402  (the script each torchrun rank runs)

runner = CliRunner()
TESTS = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as each torchrun rank has: steadier on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts(synth_corpus):
    """The synthetic corpus decoded and split: speakers 01-03 train, 04 validation, 05-06 test."""
    dataset = load_dataset(synth_corpus)
    split = make_split(dataset, test_speakers=worker.TEST_SPEAKERS, val_speakers=worker.VAL_SPEAKERS)
    signals = [load_audio(path)[0] for path in dataset.paths]
    return {name: ([signals[i] for i in rows], dataset.y[rows]) for name, rows in split.parts.items()} | {
        "dataset": dataset
    }


def test_options_and_refusals(synth_corpus, tiny_wav2vec2, tmp_path, monkeypatch):
    assert parse_finetune("top-3") == 3 and parse_finetune(" TOP-1 ") == 1
    for bad in ("top-0", "3", "all", "top-x"):
        with pytest.raises(ValueError, match="expected top-N with N >= 1"):
            parse_finetune(bad)
    assert TrainConfig(finetune=2, lr=1e-3).resolved().encoder_lr == pytest.approx(1e-4)  # a tenth of the head's
    assert TrainConfig(finetune=2, lr=1e-3, encoder_lr=5e-5).encoder_lr == 5e-5
    assert TrainConfig().encoder_lr is None
    with pytest.raises(ValueError, match="speaker_norm"):
        TrainConfig(finetune=1, speaker_norm=True)
    with pytest.raises(ValueError, match="finetune"):
        TrainConfig(finetune=-1)
    # Several processes only in fine-tune mode; refused before anything is written.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="only in fine-tune mode"):
        train(synth_corpus, encoder=str(tiny_wav2vec2), out=tmp_path / "run", config=TrainConfig(max_epochs=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("which", ["wav2vec2", "whisper"])
def test_pooled_features_equal_the_inference_path_and_only_the_top_gets_gradients(which, tiny_wav2vec2, whisper_tiny):
    encoder = load_encoder(str(tiny_wav2vec2 if which == "wav2vec2" else whisper_tiny))
    rng = np.random.default_rng(0)
    lengths = [8000, 20800, 32000] + ([31 * 16000] if which == "whisper" else [])  # whisper: a 31 s clip is two windows
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    trainable = unfreeze_top(encoder, 1)
    pooled = encoder.pooled_features(signals)
    assert pooled.shape == (len(signals), encoder.n_layers, encoder.dim) and pooled.requires_grad
    np.testing.assert_allclose(pooled.detach().numpy(), np.stack(encoder.features(signals)), rtol=1e-5, atol=1e-5)

    pooled[:, -1].pow(2).sum().backward()
    last = encoder.n_transformer_layers - 1
    top = f"layers.{last}." if which == "whisper" else f"encoder.layers.{last}."
    expected = {name for name, _ in encoder.module.named_parameters() if name.startswith(top)}
    if which == "whisper":
        expected |= {"layer_norm.weight", "layer_norm.bias"}  # the final norm acts on the top layer's output
    else:
        expected -= {f"{top}attention.k_proj.bias"}  # zero gradient by construction: kept frozen
    assert set(trainable) == expected
    for name, parameter in encoder.module.named_parameters():
        if name in expected:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    with pytest.raises(
        ValueError, match=f"has {last + 1} transformer layers; expected top-N with N from 1 to {last + 1}"
    ):
        encoder.top_layers(last + 2)


def test_egemaps_cannot_be_unfrozen():
    pytest.importorskip("opensmile", reason="opensmile is not installed (pip install 'speech-emotion[egemaps]')")
    with pytest.raises(
        ValueError, match=r"encoder 'egemaps' \(egemaps\) has no trainable layers: nothing to fine-tune"
    ):
        unfreeze_top(load_encoder("egemaps"), 1)


def test_the_top_layer_alone_learns_and_the_bundle_predicts_the_same(parts, tiny_wav2vec2, tmp_path):
    # lr 0 for the head: it stays at its random initialisation, so whatever is learned is learned
    # by the encoder's top layer, through the differentiable pooling.
    config = TrainConfig(
        max_epochs=6,
        patience=100,
        lr=0.0,
        encoder_lr=1e-2,
        hidden=0,
        dropout=0.0,
        batch_size=12,
        finetune=1,
        stop_on_alarm=False,
    )
    encoder = load_encoder(str(tiny_wav2vec2))
    before = {k: v.clone() for k, v in encoder.module.state_dict().items()}
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = parts["train"], parts["val"], parts["test"]
    fit = fit_finetune(encoder, train_x, train_y, val_x, val_y, n_classes=3, config=config)

    history = fit.history
    assert history[0]["val_accuracy"] <= 0.75 and max(h["val_uar"] for h in history) >= 0.9, history
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"], history
    test_logits = predict_logits(fit.head, np.stack(fit.encoder.features(test_x)))
    assert (test_logits.argmax(axis=1) == test_y).mean() >= 0.75  # chance: 1/3

    after = fit.encoder.module.state_dict()
    for name, value in before.items():
        if name in fit.trainable:
            assert not torch.equal(value, after[name]), f"{name} did not train"
        else:
            assert torch.equal(value, after[name]), f"{name} is frozen but changed"

    dataset = parts["dataset"]
    meta = BundleMeta(
        classes=tuple(dataset.schema.classes),
        schema=dataset.schema.to_dict(),
        preprocessing=encoder.preprocessing,
        encoder=EncoderRef.of(encoder, reference=str(tiny_wav2vec2), path=str(tiny_wav2vec2)),
    )
    written = save_finetuned_bundle(tmp_path / "model", fit.head, fit.encoder, meta)
    assert written.encoder.bundled == "encoder" and written.encoder.path is None
    assert written.encoder.base_fingerprint == encoder.fingerprint != written.encoder.fingerprint
    predictor = Predictor.from_pretrained(tmp_path / "model")
    assert predictor.encoder.fingerprint == written.encoder.fingerprint
    loaded = np.array([[p["probabilities"][c] for c in predictor.classes] for p in predictor.predict(test_x)])
    np.testing.assert_allclose(loaded, softmax(test_logits), atol=1e-5)
    # The fingerprint check stays meaningful: the pretrained encoder does not pass for the fine-tuned one.
    with pytest.raises(BundleError, match="fingerprint"):
        Predictor.from_pretrained(tmp_path / "model", encoder=str(tiny_wav2vec2))


def test_whisper_tiny_top1_run_folder_carries_the_encoder(synth_corpus, whisper_tiny, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(max_epochs=3, lr=3e-3, hidden=0, batch_size=12, finetune=1, stop_on_alarm=False)
    results = train(
        synth_corpus,
        encoder=str(whisper_tiny),
        out=run,
        test_speakers=worker.TEST_SPEAKERS,
        val_speakers=worker.VAL_SPEAKERS,
        config=config,
    )
    assert results["test"]["accuracy"] >= 0.9 and results["test"]["n"] == 24
    assert results["finetune"]["top"] == 1 and results["finetune"]["processes"] == 1
    saved_config = json.loads((run / "config.json").read_text())
    assert saved_config["train"]["finetune"] == 1 and saved_config["train"]["encoder_lr"] is None  # as asked
    assert saved_config["train_resolved"]["encoder_lr"] == pytest.approx(3e-4)  # as trained
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["seconds"] > 0 for e in epochs)
    assert not (run / "checkpoints").exists()
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        assert (run / "model" / "encoder" / name).is_file(), name

    base, tuned = (
        load_file(whisper_tiny / "model.safetensors"),
        load_file(run / "model" / "encoder" / "model.safetensors"),
    )
    top = ("encoder.layers.3.", "encoder.layer_norm.")
    assert set(tuned) <= set(base)
    for name, value in tuned.items():
        if name.startswith(top):
            assert not torch.equal(value, base[name]), f"{name} did not train"
        else:
            assert torch.equal(value, base[name]), f"{name} is frozen but changed"

    meta = json.loads((run / "model" / "model.json").read_text())
    assert (
        meta["encoder"]["bundled"] == "encoder"
        and meta["encoder"]["base_fingerprint"] != meta["encoder"]["fingerprint"]
    )
    predictor = Predictor.from_pretrained(run)  # loads model/encoder, fingerprint checked
    rows = [line.split(",") for line in (run / "predictions.csv").read_text().splitlines()[1:]]
    test_rows = [row for row in rows if row[0] == "test"]
    in_memory = np.array([[float(v) for v in row[6:]] for row in test_rows])  # logits of the model as trained
    clips = [load_audio(row[1])[0] for row in test_rows]
    features = np.stack(predictor.encoder.features(clips))
    np.testing.assert_allclose(predict_logits(predictor.backend.bundle.head, features), in_memory, rtol=1e-4, atol=1e-4)
    loaded = [predictor(row[1])["probabilities"] for row in test_rows]
    np.testing.assert_allclose(
        [[p[c] for c in predictor.classes] for p in loaded],
        softmax(in_memory / predictor.meta.temperature),
        atol=1e-4,
    )
    pretrained = np.stack(load_encoder(str(whisper_tiny)).features(clips))
    np.testing.assert_allclose(
        pretrained[:, :-1], features[:, :-1], rtol=1e-5, atol=1e-5
    )  # frozen layers: same statistics
    assert np.abs(pretrained[:, -1] - features[:, -1]).max() > 1e-2  # the top layer's moved

    report = evaluate(run, synth_corpus)  # through the feature store, keyed by the fine-tuned fingerprint
    assert report["n"] == 24 and report["accuracy"] == pytest.approx(results["test"]["accuracy"])
    if importlib.util.find_spec("onnxruntime") is not None:  # the ONNX export carries the fine-tuned encoder too
        from speech_emotion.export.onnx import export_onnx

        export_onnx(run, tmp_path / "onnx")
        exported = Predictor.from_pretrained(tmp_path / "onnx")
        assert exported.backend_name == "onnx"
        np.testing.assert_allclose(np.stack(exported.encoder.features(clips[:4])), features[:4], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="cannot be resumed"):
        resume(run)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_match_one_process(synth_corpus, tiny_wav2vec2, tmp_path):
    """torchrun, 2 CPU processes (gloo), batch 12 = 2 × 6: the same weights on both ranks and as one process with batch
    12.
    """
    one = tmp_path / "one"
    train(
        synth_corpus,
        encoder=str(tiny_wav2vec2),
        out=one,
        test_speakers=worker.TEST_SPEAKERS,
        val_speakers=worker.VAL_SPEAKERS,
        config=worker.config(),
    )

    two, dump = tmp_path / "two", tmp_path / "dump"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(TESTS / "ddp_finetune_worker.py"),
        str(synth_corpus),
        str(tiny_wav2vec2),
        str(two),
        str(dump),
    ]
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [load_file(dump / f"rank{r}.safetensors") for r in (0, 1)]
    info = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in info] == [2, 2] and info[0]["pid"] != info[1]["pid"]
    assert ranks[0].keys() == ranks[1].keys() and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    untimed = [[{k: v for k, v in record.items() if k != "seconds"} for record in i["history"]] for i in info]
    assert untimed[0] == untimed[1]  # same losses and metrics, hence the same early-stopping decisions
    assert info[0]["best_epoch"] == 3  # improved to the end: every step is compared below

    def bundle(run: Path) -> dict:
        head, encoder = (
            load_file(run / "model" / "model.safetensors"),
            load_file(run / "model" / "encoder" / "model.safetensors"),
        )
        return {k: head[k[5:]] if k.startswith("head.") else encoder[k[8:]] for k in ranks[0]}

    base = load_file(tiny_wav2vec2 / "model.safetensors")
    moved = max(float((ranks[0][k] - base[k[8:]]).abs().max()) for k in ranks[0] if k.startswith("encoder."))
    assert moved > 1e-2  # the top layer really trained
    single, double = bundle(one), bundle(two)
    for name, value in ranks[0].items():
        torch.testing.assert_close(single[name], value, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(double[name], value, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    a = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_uar"] for r in a] == [r["val_uar"] for r in b]
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-5)

    # Rank 0 alone wrote the run folder: its pid in status.json, one line per epoch, nothing else.
    assert json.loads((two / "status.json").read_text())["pid"] == info[0]["pid"]
    assert len(b) == 3
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    results = json.loads((two / "results.json").read_text())
    assert results["finetune"]["processes"] == 2 and results["test"]["accuracy"] == pytest.approx(
        json.loads((one / "results.json").read_text())["test"]["accuracy"]
    )


def test_cli_finetune_and_its_errors(synth_corpus, tiny_wav2vec2, tmp_path):
    run = tmp_path / "run"
    common = ["--test-speakers", "05-06", "--val-speakers", "04", "--warn-only"]
    done = runner.invoke(
        app,
        [
            "train",
            str(synth_corpus),
            "--encoder",
            str(tiny_wav2vec2),
            "--out",
            str(run),
            *common,
            "--finetune",
            "top-1",
            "--epochs",
            "2",
            "--batch-size",
            "12",
            "--encoder-lr",
            "1e-3",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    results = json.loads(done.stdout)
    assert results["finetune"]["top"] == 1 and results["finetune"]["encoder_lr"] == 1e-3 and results["epochs_run"] == 2
    assert (run / "model" / "encoder" / "model.safetensors").is_file()
    clip = sorted((synth_corpus / "Actor_06").glob("*.wav"))[0]
    predicted = runner.invoke(app, ["predict", str(run), str(clip), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["label"] in results["classes"]

    refused = runner.invoke(app, ["train", "--resume", str(run)])
    assert refused.exit_code == 1 and "cannot be resumed" in refused.stderr

    cases = [
        (
            ["--encoder", str(tiny_wav2vec2), "--finetune", "top-3"],
            "has 2 transformer layers; expected top-N with N from 1 to 2",
        ),
        (["--encoder", "egemaps", "--finetune", "top-1"], "nothing to fine-tune"),
        (["--encoder", str(tiny_wav2vec2), "--finetune", "all"], "expected top-N with N >= 1"),
        (["--encoder", str(tiny_wav2vec2), "--encoder-lr", "1e-4"], "add --finetune top-N"),
    ]
    for n, (options, message) in enumerate(cases):
        out = tmp_path / f"bad{n}"
        failed = runner.invoke(app, ["train", str(synth_corpus), *options, "--out", str(out), *common])
        assert failed.exit_code == 1 and message in " ".join(failed.stderr.split()), failed.stderr
        assert not out.exists()  # refused before the run folder was made


# --- the top layers alone, from cached frozen states --------------------------------------------


def _tiny_ssl(folder: Path, model_type: str) -> Path:
    """A tiny random HuBERT or WavLM folder (post-norm HuBERT: the other layer-norm placement than the fixture's)."""
    import transformers

    config_class, model_class = {"hubert": ("HubertConfig", "HubertModel"), "wavlm": ("WavLMConfig", "WavLMModel")}[
        model_type
    ]
    config = getattr(transformers, config_class)(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=False,
    )
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("which", ["whisper", "wav2vec2", "hubert"])
def test_top_layers_on_cached_states_equal_the_whole_encoder(which, tiny_wav2vec2, whisper_tiny, tmp_path):
    """Cache + top layers == the whole differentiable forward: features and gradients, padded batches, long clips."""
    folder = {"whisper": whisper_tiny, "wav2vec2": tiny_wav2vec2}.get(which) or _tiny_ssl(tmp_path / which, which)
    encoder = load_encoder(str(folder))
    assert encoder.can_run_top
    rng = np.random.default_rng(1)
    lengths = [8000, 20800, 32000, 12345] + (
        [31 * 16000] if which == "whisper" else []
    )  # whisper: a 31 s clip is two windows
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    for top in sorted({1, encoder.n_transformer_layers}):  # whisper top-4: from the convolutions' output + positions
        n_frozen = encoder.n_layers - top
        computed = encoder.frozen_states(signals, top=top)
        windows = [encoder.window_frames(len(s)) for s in signals]
        assert [sum(w) for w in windows] == [states.shape[0] for states, _ in computed]
        if which == "whisper":
            assert windows[-1] == [775, 775]
        pooled = np.stack([p for _, p in computed])
        np.testing.assert_allclose(pooled, np.stack(encoder.features(signals)), rtol=1e-6, atol=1e-6)

        unfreeze_top(encoder, top)
        encoder.module.zero_grad(set_to_none=True)
        full = encoder.pooled_features(signals)
        full[:, n_frozen:].pow(2).sum().backward()
        full_grads = {n: p.grad.clone() for n, p in encoder.module.named_parameters() if p.grad is not None}
        encoder.module.zero_grad(set_to_none=True)

        exact = encoder.top_pooled_features(
            [s for s, _ in computed], windows, pooled[:, :n_frozen], top=top, batch_seconds=4.0
        )
        assert exact.shape == full.shape and exact.requires_grad
        np.testing.assert_allclose(exact.detach().numpy(), full.detach().numpy(), rtol=1e-5, atol=1e-5)
        exact[:, n_frozen:].pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in encoder.module.named_parameters() if p.grad is not None}
        assert grads.keys() == full_grads.keys() and grads  # the same parameters get gradients: the top layers'
        flat, reference = (torch.cat([g[n].flatten() for n in sorted(g)]) for g in (grads, full_grads))
        assert (
            float((flat - reference).norm() / reference.norm()) < 1e-5
        )  # (near-zero tensors such as k_proj's differ by rounding only)
        encoder.module.zero_grad(set_to_none=True)

        with torch.no_grad():  # float16, as cached: its own rounding, about 1e-3 of the values' scale
            half = encoder.top_pooled_features(
                [s.astype(np.float16) for s, _ in computed], windows, pooled[:, :n_frozen], top=top
            )
        scale = np.abs(full.detach().numpy()[:, n_frozen:]).max()
        error = np.abs(half.numpy() - full.detach().numpy()).max()
        assert 0 < error < 3e-3 * scale, (error, scale)

    with pytest.raises(ValueError, match="expected top-N with N from 1"):
        encoder.top_pooled_features([], [], np.zeros((0, 1, encoder.dim)), top=encoder.n_transformer_layers + 1)


def test_wavlm_runs_the_whole_encoder(tmp_path):
    """WavLM's first layer computes the position bias the others use: no cached path, and fit_finetune falls back."""
    encoder = load_encoder(str(_tiny_ssl(tmp_path / "wavlm", "wavlm")))
    assert not encoder.can_run_top
    with pytest.raises(ValueError, match="cannot run its top layers from cached states"):
        encoder.top_pooled_features([], [], np.zeros((0, 2, encoder.dim)), top=1)


def test_fit_finetune_runs_only_the_top_layers_and_matches_the_whole_encoder(parts, tiny_wav2vec2, monkeypatch):
    """The cached path never runs the whole encoder during training, and trains like it (float16 rounding aside)."""
    config = TrainConfig(
        max_epochs=2,
        patience=10,
        lr=1e-3,
        encoder_lr=1e-2,
        hidden=0,
        dropout=0.0,
        batch_size=12,
        finetune=1,
        stop_on_alarm=False,
    )
    (train_x, train_y), (val_x, val_y) = parts["train"], parts["val"]
    whole = fit_finetune(
        load_encoder(str(tiny_wav2vec2)), train_x, train_y, val_x, val_y, n_classes=3, config=config, cache_states=False
    )

    encoder = load_encoder(str(tiny_wav2vec2))
    calls = []
    original = encoder.pooled_features
    monkeypatch.setattr(encoder, "pooled_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    cached = fit_finetune(encoder, train_x, train_y, val_x, val_y, n_classes=3, config=config)
    assert calls == []  # no step ran the lower layers
    for a, b in zip(whole.history, cached.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3) and a["val_loss"] == pytest.approx(
            b["val_loss"], rel=1e-3
        )
    trained = dict(cached.encoder.module.named_parameters())
    for name, value in whole.encoder.module.named_parameters():
        torch.testing.assert_close(trained[name], value, atol=1e-3, rtol=0, msg=name)
    # The kept weights are scored through the inference path at the end: what the bundle will predict.
    np.testing.assert_allclose(
        cached.val_logits, predict_logits(cached.head, np.stack(cached.encoder.features(val_x))), rtol=1e-5, atol=1e-5
    )
