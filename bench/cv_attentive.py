"""6-fold leave-speakers-out CV of attentive statistics pooling over frames, against the default probe.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 python bench/cv_attentive.py [--epochs 15] [--patience 5]

Same folds as ``ser cv … --folds 6 --seed 0``. Each clip's hidden states of every Whisper-base
layer are kept in memory (fp16, about 1.4 GB for the 1,080 shared clips; encoded once, about a
minute). Per fold, frames are standardised per layer and dimension on the training actors.
One attention over frames, ``softmax_t(v · tanh(W [h_t of all layers]))``, weights every
layer's mean and std (attentive statistics pooling, Okabe et al., 2018). With ``v = 0`` that
is uniform pooling, i.e. the default features, so the model starts as the default recipe: the
linear head is first fitted by full-batch L-BFGS with the default L2 penalty, then attention
(lr 1e-3) and head (lr 1e-4) train together with Adam on the class-weighted loss, keeping the
epoch with the best validation UAR (the L-BFGS start counts as epoch 0). Prints, per fold, the
start's and the final test accuracy, then both means. Every setting was fixed before the run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("SER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default=str(SHARED / "models" / "whisper-base-encoder"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--attention-dim", type=int, default=64)
    parser.add_argument("--l2", type=float, default=1.0, help="the default head's L2 penalty (weight_decay)")
    args = parser.parse_args()

    import torch

    from speech_emotion.data import load_dataset
    from speech_emotion.data.audio import load_audio
    from speech_emotion.data.splits import leave_speakers_out
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.model.metrics import classification_metrics
    from speech_emotion.training.loop import class_weights

    dataset = load_dataset(SHARED / "data" / "ravdess-speech-16k", labels="ravdess-8")
    encoder = load_encoder(args.encoder)
    started = time.perf_counter()
    clips = [encoder.frames(load_audio(path)[0]).astype(np.float16) for path in dataset.paths]
    print(f"encoded {len(clips)} clips in {time.perf_counter() - started:.0f} s", flush=True)
    y, speakers, classes = np.asarray(dataset.y), list(dataset.speakers), dataset.schema.classes
    n_layers, _, dim = clips[0].shape

    def score(model, idx) -> dict:
        model.eval()
        with torch.no_grad():
            pred = np.concatenate([model(*batch(idx[b : b + 64])).argmax(1).numpy() for b in range(0, len(idx), 64)])
        return classification_metrics(y[idx], pred, classes)

    def batch(idx):
        longest = max(clips[i].shape[1] for i in idx)
        x = np.zeros((len(idx), n_layers, longest, dim), np.float32)
        mask = np.zeros((len(idx), longest), bool)
        for j, i in enumerate(idx):
            x[j, :, : clips[i].shape[1]], mask[j, : clips[i].shape[1]] = clips[i], True
        return torch.from_numpy(x), torch.from_numpy(mask)

    class AttentivePooling(torch.nn.Module):
        def __init__(self, frame_mean, frame_std, stat_mean, stat_std):
            super().__init__()
            self.scale = [torch.from_numpy(a.astype(np.float32)) for a in (frame_mean, frame_std, stat_mean, stat_std)]
            self.score = torch.nn.Sequential(
                torch.nn.Linear(n_layers * dim, args.attention_dim),
                torch.nn.Tanh(),
                torch.nn.Linear(args.attention_dim, 1, bias=False),
            )
            torch.nn.init.zeros_(self.score[2].weight)  # uniform weights: the default features
            self.out = torch.nn.Linear(n_layers * 2 * dim, len(classes))

        def pooled(self, x, mask):
            frame_mean, frame_std, stat_mean, stat_std = self.scale
            x = (x - frame_mean[None, :, None]) / frame_std[None, :, None]
            scores = self.score(x.permute(0, 2, 1, 3).flatten(2)).squeeze(-1).masked_fill(~mask, -1e9)
            weights = torch.softmax(scores, dim=1)[:, None, :, None]
            mean = (weights * x).sum(2)
            std = ((weights * x * x).sum(2) - mean**2).clamp_min(1e-6).sqrt()
            return ((torch.cat([mean, std], 2) - stat_mean) / stat_std).flatten(1)

        def forward(self, x, mask):
            return self.out(self.pooled(x, mask))

    rows = []
    for split in leave_speakers_out(speakers, 6, seed=0):
        train, val, test = split.parts["train"], split.parts["val"], split.parts["test"]
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        frames = np.concatenate([clips[i] for i in train], axis=1).astype(np.float32)
        frame_mean, frame_std = frames.mean(1), frames.std(1) + 1e-5
        del frames
        stats = np.stack(
            [
                np.concatenate([c.mean(1), c.std(1)], 1)
                for c in ((clips[i] - frame_mean[:, None]) / frame_std[:, None] for i in train)
            ]
        )
        model = AttentivePooling(frame_mean, frame_std, stats.mean(0), stats.std(0) + 1e-5)
        loss_fn = torch.nn.CrossEntropyLoss(
            weight=torch.tensor(class_weights(y[train], len(classes)), dtype=torch.float32)
        )
        target = torch.from_numpy(y[train])
        standardised = torch.from_numpy(
            ((stats - stats.mean(0)) / (stats.std(0) + 1e-5)).reshape(len(train), -1).astype(np.float32)
        )
        lbfgs = torch.optim.LBFGS(
            model.out.parameters(), max_iter=500, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6
        )

        def objective():
            lbfgs.zero_grad()
            loss = loss_fn(model.out(standardised), target) + args.l2 / 2 * model.out.weight.pow(2).sum()
            loss.backward()
            return loss

        lbfgs.step(objective)
        start = score(model, test)["accuracy"]
        best, best_state, stale = score(model, val)["uar"], {k: v.clone() for k, v in model.state_dict().items()}, 0
        adam = torch.optim.Adam(
            [{"params": model.score.parameters(), "lr": 1e-3}, {"params": model.out.parameters(), "lr": 1e-4}]
        )
        for _ in range(args.epochs):
            model.train()
            order = rng.permutation(train)
            for b in range(0, len(order), 32):
                idx = order[b : b + 32]
                loss = (
                    loss_fn(model(*batch(idx)), torch.from_numpy(y[idx])) + args.l2 / 2 * model.out.weight.pow(2).sum()
                )
                adam.zero_grad()
                loss.backward()
                adam.step()
            uar = score(model, val)["uar"]
            if uar > best:
                best, best_state, stale = uar, {k: v.clone() for k, v in model.state_dict().items()}, 0
            elif (stale := stale + 1) >= args.patience:
                break
        model.load_state_dict(best_state)
        final = score(model, test)
        rows.append((start, final["accuracy"], final["uar"]))
        print(
            f"test {','.join(split.speakers['test'])}: L-BFGS start {start:.1%} → attentive {final['accuracy']:.1%} "
            f"(UAR {final['uar']:.1%})",
            flush=True,
        )
    a = np.array(rows)
    print(
        f"start (default probe): {a[:, 0].mean():.1%} ± {a[:, 0].std():.1%}; attentive pooling: accuracy "
        f"{a[:, 1].mean():.1%} ± {a[:, 1].std():.1%}, "
        f"UAR {a[:, 2].mean():.1%} ± {a[:, 2].std():.1%} ({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
