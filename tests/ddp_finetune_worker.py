"""One rank of the 2-process fine-tune test (tests/test_finetune.py launches it with torchrun).

    python -m torch.distributed.run --nproc-per-node 2 ... tests/ddp_finetune_worker.py CORPUS ENCODER RUN DUMP

Every rank first runs the library's ``train`` (rank 0 alone writes RUN), then fine-tunes
again with ``fit_finetune`` on the same clips and split, and writes what it ended with,
the head and the trained encoder tensors, to ``DUMP/rank<R>.safetensors``, with its pid in
``DUMP/rank<R>.json``: the test compares ranks with each other and with one process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TEST_SPEAKERS = ["05", "06"]
VAL_SPEAKERS = ["04"]


def config():
    """The tiny recipe both the test's single process and the ranks use (dropout 0: ranks draw no masks)."""
    from speech_emotion.training.config import TrainConfig

    return TrainConfig(
        max_epochs=3,
        patience=10,
        lr=1e-3,
        encoder_lr=1e-2,
        hidden=0,
        dropout=0.0,
        batch_size=12,
        finetune=1,
        stop_on_alarm=False,
    )


def main(corpus: str, encoder: str, run: str, dump: str) -> None:
    import torch
    from safetensors.torch import save_file

    from speech_emotion.data.audio import load_audio
    from speech_emotion.data.dataset import load_dataset
    from speech_emotion.features.encoders import load_encoder
    from speech_emotion.training.distributed import current_world, process_group
    from speech_emotion.training.finetune import fit_finetune
    from speech_emotion.training.pipeline import make_split, train

    world = current_world()
    with process_group(world):  # one group for both calls (train() uses it and leaves it alone)
        train(corpus, encoder=encoder, out=run, test_speakers=TEST_SPEAKERS, val_speakers=VAL_SPEAKERS, config=config())

        dataset = load_dataset(corpus)
        split = make_split(dataset, test_speakers=TEST_SPEAKERS, val_speakers=VAL_SPEAKERS)
        signals = [load_audio(path)[0] for path in dataset.paths]
        train_rows, val_rows = split.parts["train"], split.parts["val"]
        fit = fit_finetune(
            load_encoder(encoder),
            [signals[i] for i in train_rows],
            dataset.y[train_rows],
            [signals[i] for i in val_rows],
            dataset.y[val_rows],
            n_classes=dataset.schema.n_classes,
            config=config(),
            world=world,
        )
    trained = set(fit.trainable)
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in fit.head.state_dict().items()}
    tensors |= {
        f"encoder.{k}": v.detach().cpu().contiguous()
        for k, v in fit.encoder.module.state_dict().items()
        if k in trained
    }
    Path(dump).mkdir(parents=True, exist_ok=True)
    save_file(tensors, os.path.join(dump, f"rank{world.rank}.safetensors"))
    info = {
        "rank": world.rank,
        "world_size": world.size,
        "pid": os.getpid(),
        "best_epoch": fit.best_epoch,
        "history": fit.history,
        "torch_threads": torch.get_num_threads(),
    }
    Path(dump, f"rank{world.rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(*sys.argv[1:5])
