"""JSON bodies of the REST service (pydantic models, shown in the OpenAPI docs at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Segment(BaseModel):
    """One window of a timeline over a long clip."""

    start: float = Field(description="Start of the window in seconds.")
    end: float = Field(description="End of the window in seconds.")
    label: str | None = Field(description="Most probable class in the window.")
    probabilities: dict[str, float] = Field(description="Probability of every class, in the model's class order.")


class Prediction(BaseModel):
    """What ``POST /predict`` returns: the same label and probabilities as ``ser predict``."""

    label: str | None = Field(description="Most probable class.")
    probabilities: dict[str, float] = Field(description="Probability of every class, in the model's class order.")
    duration: float = Field(description="Duration of the decoded clip in seconds.")
    model: str = Field(description="Name of the model that answered.")
    segments: list[Segment] | None = Field(
        default=None, description="Only with ?timeline=1: predictions over sliding windows."
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a short code and a message that says what was wrong and what to do."""

    error: str = Field(description="Kind of error, e.g. 'too_large', 'unsupported_format', 'unreadable_audio'.")
    detail: str = Field(description="What was wrong and how to fix it.")


class EncoderInfo(BaseModel):
    """The frozen encoder the model was trained on."""

    reference: str | None = Field(
        default=None, description="Hub id (e.g. 'openai/whisper-base'), or a local folder's name (never its path)."
    )
    family: str | None = None
    fingerprint: str | None = None
    n_layers: int | None = None
    dim: int | None = None


class ModelInfo(BaseModel):
    """What ``GET /model`` returns."""

    name: str = Field(description="Name of the model (its run folder).")
    classes: list[str] = Field(description="Class names in index order.")
    encoder: EncoderInfo
    metrics: dict = Field(description="Metrics recorded in model.json at training (validation and test speakers).")
    protocol: str | None = Field(
        default=None, description="Evaluation protocol of the metrics, e.g. 'speaker-disjoint'."
    )


class Health(BaseModel):
    """What ``GET /health`` returns."""

    status: str = Field(description="'ok' while the server answers.")
    model: str
    in_flight: int = Field(description="Inferences running now.")
    waiting: int = Field(description="Requests admitted and not running: receiving their body, or waiting for a turn.")
    limits: dict = Field(
        description="max_bytes, max_duration (s), min_duration (s), formats, max_concurrent, max_queue."
    )
