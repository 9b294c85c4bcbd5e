"""A training run that stops at a known point, so a test can SIGKILL it there (kill/resume, monitor).

Usage: ``python paused_run.py SPEC`` where SPEC is JSON: ``{"pause": "STAGE:N", "marker": PATH}`` plus
either ``{"resume": RUN}`` or ``{"train": {"data": …, "encoder": …, "out": …, "config": {TrainConfig fields},
…other keyword arguments of speech_emotion.training.pipeline.train}}``. The run goes through the library's
``on_step`` hook: at the first step of STAGE with a count of at least N (an epoch number for
``training``) it writes PATH and sleeps until it is killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from speech_emotion.training.config import TrainConfig
from speech_emotion.training.pipeline import resume, train


def main(spec: dict) -> None:
    stage, _, n = spec["pause"].partition(":")
    marker = Path(spec["marker"])

    def on_step(current: str, count: int) -> None:
        if current == stage and count >= int(n) and not marker.exists():
            marker.write_text(spec["pause"])
            time.sleep(600)

    if "resume" in spec:
        resume(spec["resume"], on_step=on_step)
    else:
        kwargs = dict(spec["train"])
        kwargs["config"] = TrainConfig(**kwargs.get("config", {}))
        train(kwargs.pop("data"), on_step=on_step, **kwargs)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
