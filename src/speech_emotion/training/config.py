"""What a run is asked to do: :class:`TrainConfig` (the head's recipe) and :class:`RunConfig` (the whole run).

Both are frozen dataclasses that keep what the user asked for; values left to ``"auto"`` are
resolved where they are used (:meth:`TrainConfig.resolved`), and a run records both. A
``RUN/config.json`` is read back through :meth:`RunConfig.from_dict`, which checks its format tag
and version and names any key it does not know. This module does not import torch.

Example:
    >>> config = TrainConfig(hidden=0)
    >>> config.optimizer, config.resolved().optimizer  # asked, then resolved for a linear head
    ('auto', 'lbfgs')
    >>> run = RunConfig.create("corpus", encoder="egemaps", labels="ravdess-7", train=TrainConfig(seed=3))
    >>> again = RunConfig.from_dict(run.to_dict())
    >>> again == run, again.train.seed, Path(again.sources[0].path).is_absolute()
    (True, 3, True)
    >>> RunConfig.from_dict(run.to_dict() | {"epochs": 3})
    Traceback (most recent call last):
    ...
    ValueError: config.json: unknown key 'epochs'; expected only format, version, speech_emotion, data, corpus,
    labels, labels_file, speaker_pattern, encoder, encoder_path, precision, test_speakers, val_speakers,
    split_file, allow_speaker_overlap, allow_single_label_speakers, skip_bad, train, train_resolved, tracking_uri
    (was it written by a newer speech-emotion?)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from speech_emotion.data.sources import CorpusSource, as_sources
from speech_emotion.features.augment import Augmentation
from speech_emotion.features.devices import PRECISIONS, check_precision
from speech_emotion.model.metadata import MIXINGS, EncoderRef, HeadConfig
from speech_emotion.version import __version__

OPTIMIZERS = ("lbfgs", "adamw")
"""Values of :attr:`TrainConfig.optimizer` besides ``"auto"``."""

BALANCES = ("class", "corpus-class", "none")
"""How training examples are weighted: by class, by corpus × class (one large or easy corpus does not
dominate), or not at all; ``"auto"``: by corpus × class with several corpora, by class with one."""

DOMAIN_NORMS = ("none", "corpus")
"""``corpus``: each corpus's pooled features are standardised by that corpus's own (unlabelled) statistics;
``"auto"``: with several corpora, ``none`` with one."""

MIXUP_COPIES = 8
"""Mixed examples added per training example when ``TrainConfig.mixup`` is on."""

ENCODER_LR_FACTOR = 0.1
"""Default learning rate of fine-tuned encoder layers, as a fraction of the head's ``lr``."""

CONFIG_FILE = "config.json"
RUN_CONFIG_FORMAT = "speech-emotion/run-config"
RUN_CONFIG_VERSION = 2
"""Version 1 (no format tag) is what speech-emotion wrote before the tag existed; it reads the same."""


_TOP = re.compile(r"^top-(\d+)$")


def parse_finetune(value: str) -> int:
    """``"top-N"`` → N (the number of top transformer layers to train).

    Raises:
        ValueError: not of the form ``top-N`` with N >= 1.

    Example:
        >>> parse_finetune("top-2")
        2
        >>> parse_finetune("2")
        Traceback (most recent call last):
        ...
        ValueError: --finetune: expected top-N with N >= 1 (e.g. top-2), got '2'
    """
    match = _TOP.match(str(value).strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"--finetune: expected top-N with N >= 1 (e.g. top-2), got {value!r}")
    return int(match.group(1))


def _unknown_keys(where: str, given: dict, known: list[str]) -> None:
    unknown = [key for key in given if key not in known]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}; expected only {', '.join(known)} "
            "(was it written by a newer speech-emotion?)"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of head training (and fine-tuning), as asked.

    ``optimizer="auto"``, ``encoder_lr=None`` and ``mixing`` under ``hf_compatible`` are
    resolved by :meth:`resolved` where training starts; the instance itself never changes.
    """

    hidden: int = 0  # default recipe: a linear classifier over all layers side by side (CV-chosen, docs/accuracy.md)
    dropout: float = 0.2  # adamw only: L-BFGS needs the same function at every evaluation
    lr: float = 1e-3  # adamw only: L-BFGS steps by line search
    weight_decay: float = 1.0  # lbfgs: L2 penalty weight_decay/2·||W||²; adamw: decoupled decay
    batch_size: int = 64  # adamw only: L-BFGS steps on the whole training set
    optimizer: str = "auto"  # "lbfgs", "adamw", or "auto": lbfgs for a linear head, adamw otherwise
    max_epochs: int = 100
    patience: int = 15
    seed: int = 0
    speaker_norm: bool = False  # standardise features per speaker (needs the speaker's other clips at inference)
    mixing: str = "concat"  # how the head combines encoder layers: "softmax" weighted sum or "concat"
    # A linear head on mean features that `ser export --format hf` copies exactly (needs hidden=0; resolves
    # mixing to "softmax").
    hf_compatible: bool = False
    stop_on_alarm: bool = True  # False: per-epoch sanity alarms warn instead of stopping (synthetic, easy data)
    finetune: int = 0  # > 0: the top N transformer layers of the encoder train with the head (training/finetune.py)
    encoder_lr: float | None = None  # learning rate of the unfrozen layers; None with finetune: lr * ENCODER_LR_FACTOR
    mixup: float = 0.0  # > 0: Beta(mixup, mixup) mixup of features and labels (MIXUP_COPIES per example); 0: off
    balance: str = "auto"  # loss weights: "class", "corpus-class", "none" or "auto" (BALANCES)
    domain_norm: str = "auto"  # "corpus": each corpus by its own unlabelled statistics; "none"; "auto" (DOMAIN_NORMS)
    augment: tuple[str, ...] = ()  # training clips added altered: "speed:0.9", "noise:10" (features/augment.py)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS + ("auto",):
            raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)} or auto, got {self.optimizer!r}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing: expected one of {', '.join(MIXINGS)}, got {self.mixing!r}")
        if self.hf_compatible and self.hidden:
            raise ValueError(
                f"hf_compatible=True needs a linear head: set hidden=0 (--hidden 0), got hidden={self.hidden}"
            )
        if self.finetune < 0:
            raise ValueError(
                f"finetune: expected the number of top encoder layers to train (0: none), got {self.finetune}"
            )
        if self.finetune and self.speaker_norm:
            raise ValueError(
                "finetune with speaker_norm: per-speaker standardisation needs fixed features; drop --speaker-norm to "
                "fine-tune"
            )
        if self.finetune and self.optimizer == "lbfgs":
            raise ValueError(
                "finetune needs mini-batch steps (optimizer adamw): the encoder cannot run on the whole training set "
                "at "
                "once"
            )
        if not 0 <= self.mixup < float("inf"):
            raise ValueError(
                "mixup: expected the Beta distribution's alpha (a finite number > 0) or 0 for no mixup, got "
                f"{self.mixup}"
            )
        if self.mixup and self.finetune:
            raise ValueError("mixup mixes pooled features, which fine-tuning does not have: drop --mixup or --finetune")
        if self.encoder_lr is not None and not self.encoder_lr > 0:
            raise ValueError(f"encoder_lr: expected a positive learning rate, got {self.encoder_lr}")
        if self.balance not in BALANCES + ("auto",):
            raise ValueError(f"balance: expected one of {', '.join(BALANCES)} or auto, got {self.balance!r}")
        if self.domain_norm not in DOMAIN_NORMS + ("auto",):
            raise ValueError(
                f"domain_norm: expected one of {', '.join(DOMAIN_NORMS)} or auto, got {self.domain_norm!r}"
            )
        if self.mixup and self.balance not in ("class", "auto"):
            raise ValueError(
                f"mixup weights mixed examples by class: use it with balance='class', got {self.balance!r}"
            )
        if self.finetune and (self.balance not in ("class", "auto") or self.domain_norm not in ("none", "auto")):
            raise ValueError(
                "fine-tuning weights its loss by class and trains on the encoder's own features: drop --balance and "
                "--domain-norm, or --finetune"
            )
        if not isinstance(self.augment, tuple):
            raise ValueError(f"augment: expected a tuple of augmentations, got {type(self.augment).__name__}")
        for text in self.augment:
            Augmentation.parse(text)  # raises naming the bad one
        if self.augment and (self.finetune or self.mixup or self.speaker_norm):
            raise ValueError(
                "augment adds altered clips' features: it cannot be combined with --finetune, --mixup or --speaker-norm"
            )
        if self.domain_norm == "corpus" and (self.speaker_norm or self.hf_compatible):
            raise ValueError(
                "domain_norm standardises each corpus; --speaker-norm (each speaker) and --hf-compatible (a stock "
                "head) cannot be combined with it"
            )

    def resolved(self, *, n_corpora: int = 1) -> TrainConfig:
        """The same recipe with every automatic choice made: what training actually uses.

        ``optimizer="auto"`` becomes ``"lbfgs"`` for a linear frozen head and ``"adamw"``
        otherwise; ``encoder_lr=None`` becomes ``lr * ENCODER_LR_FACTOR`` when fine-tuning;
        ``hf_compatible`` heads mix layers with ``"softmax"`` weights (a stock transformers
        head sums layers); ``balance`` and ``domain_norm`` left to ``"auto"`` follow the number of
        corpora trained on (``n_corpora``): per corpus with several, as for one corpus otherwise.

        >>> TrainConfig(hidden=64).resolved().optimizer, TrainConfig(finetune=2, lr=1e-3).resolved().encoder_lr
        ('adamw', 0.0001)
        """
        optimizer = self.optimizer
        if optimizer == "auto":
            optimizer = "lbfgs" if not self.hidden and not self.finetune else "adamw"
        encoder_lr = self.encoder_lr
        if self.finetune and encoder_lr is None:
            encoder_lr = self.lr * ENCODER_LR_FACTOR
        mixing = "softmax" if self.hf_compatible else self.mixing
        several = n_corpora > 1 and not self.finetune and not self.speaker_norm and not self.hf_compatible
        balance = ("corpus-class" if several else "class") if self.balance == "auto" else self.balance
        domain_norm = ("corpus" if several else "none") if self.domain_norm == "auto" else self.domain_norm
        return replace(
            self, optimizer=optimizer, encoder_lr=encoder_lr, mixing=mixing, balance=balance, domain_norm=domain_norm
        )

    def head_config(self, *, n_layers: int, dim: int, n_classes: int) -> HeadConfig:
        """The shape of the head this recipe trains on features of ``n_layers`` × ``dim``."""
        resolved = self.resolved()
        return HeadConfig(
            n_layers=n_layers,
            dim=dim,
            n_classes=n_classes,
            hidden=resolved.hidden,
            dropout=resolved.dropout,
            hf_compatible=resolved.hf_compatible,
            mixing=resolved.mixing,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict, *, where: str = "train") -> TrainConfig:
        """The config a :meth:`to_dict` gave; a key it does not know is an error naming it."""
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a JSON object of training settings, got {type(spec).__name__}")
        _unknown_keys(where, spec, [f.name for f in fields(cls)])
        return cls(**spec | ({"augment": tuple(spec["augment"])} if "augment" in spec else {}))


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was asked to do; ``RUN/config.json`` is its :meth:`to_dict`.

    Attributes:
        sources: the corpora (folder or CSV/TSV manifest, made absolute; adapter; speaker
            pattern), one or several (:class:`~speech_emotion.data.sources.CorpusSource`).
        labels: the ``--labels`` value as given (a built-in name, a file path, a mapping or a
            schema dict), or None for every raw label.
        labels_file: the absolute path of ``labels`` when it names a file.
        encoder: the encoder reference as given and, for a local folder, its absolute path.
        precision: ``"fp32"`` or ``"bf16"``: the precision the encoder computes features in
            (bf16 features are not fp32 features, so it is part of the run; the device it runs
            on is not, since it does not change the answer).
        test_speakers, val_speakers: speakers asked for each part (None: no test part; a
            seeded sixth for validation, drawn from every corpus).
        split_file: a split saved by ``ser data split`` (kept whole).
        allow_speaker_overlap: whether parts may share speakers (not speaker-independent).
        allow_single_label_speakers: accept speakers that each have a single label.
        skip_bad: leave out files that will not load.
        train: the head's recipe as asked (:meth:`TrainConfig.resolved` gives what runs).
        tracking_uri: the MLflow server the run logs to.
        speech_emotion: the version that wrote the config.
    """

    sources: tuple[CorpusSource, ...]
    encoder: EncoderRef
    train: TrainConfig = field(default_factory=TrainConfig)
    precision: str = "fp32"
    labels: str | dict | None = None
    labels_file: str | None = None
    test_speakers: tuple[str, ...] | None = None
    val_speakers: tuple[str, ...] | None = None
    split_file: dict | None = None
    allow_speaker_overlap: bool = False
    allow_single_label_speakers: bool = False
    skip_bad: bool = False
    tracking_uri: str | None = None
    speech_emotion: str = __version__

    def __post_init__(self) -> None:
        if check_precision(self.precision) != self.precision:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision != "fp32" and self.train.finetune:
            raise ValueError(
                f"--precision {self.precision} applies to the frozen encoder's forward pass; fine-tuning "
                f"(--finetune top-{self.train.finetune}) trains in fp32: drop --precision"
            )

    @classmethod
    def create(
        cls,
        data: str | Path | list,
        *,
        encoder: str,
        labels: Any = None,
        train: TrainConfig | None = None,
        corpus: str | None = None,
        speaker_pattern: str | None = None,
        precision: str = "fp32",
        **options: Any,
    ) -> RunConfig:
        """A run's config from the values a user gives (paths made absolute, label files found).

        ``data`` is one corpus or a list (``PATH`` or ``PATH::ADAPTER``); ``labels`` may be a
        built-in name, a path, a mapping or a :class:`~speech_emotion.data.labels.LabelSchema`;
        ``options`` are the other fields.
        """
        if hasattr(labels, "to_dict"):  # a LabelSchema
            labels = labels.to_dict()
        elif isinstance(labels, Path):
            labels = str(labels)
        labels_file = None
        if isinstance(labels, str) and not labels.lstrip().startswith("{") and Path(labels).is_file():
            labels_file = str(Path(labels).resolve())
        path = str(Path(encoder).resolve()) if Path(encoder).exists() else None
        for part in ("test_speakers", "val_speakers"):
            if options.get(part) is not None:
                options[part] = tuple(options[part])
        sources = as_sources(data, corpus=corpus, speaker_pattern=speaker_pattern)
        return cls(
            sources=tuple(source.absolute() for source in sources),
            encoder=EncoderRef(reference=str(encoder), path=path),
            train=train or TrainConfig(),
            precision=check_precision(precision),
            labels=labels,
            labels_file=labels_file,
            **options,
        )

    @property
    def labels_source(self) -> str | dict | None:
        """What to build the label schema from: the file's absolute path, else ``labels`` as given."""
        return self.labels_file or self.labels

    def to_dict(self) -> dict:
        """``RUN/config.json``: flat keys, the recipe as asked (``train``) and as resolved (``train_resolved``).

        One corpus is written as before (``data``, ``corpus``, ``speaker_pattern``); several as a list
        of sources under ``data``.
        """
        single = self.sources[0] if len(self.sources) == 1 else None
        return {
            "format": RUN_CONFIG_FORMAT,
            "version": RUN_CONFIG_VERSION,
            "speech_emotion": self.speech_emotion,
            "data": single.path if single else [source.to_dict() for source in self.sources],
            "corpus": single.adapter if single else None,
            "labels": self.labels,
            "labels_file": self.labels_file,
            "speaker_pattern": single.speaker_pattern if single else None,
            "encoder": self.encoder.reference,
            "encoder_path": self.encoder.path,
            "precision": self.precision,
            "test_speakers": list(self.test_speakers) if self.test_speakers is not None else None,
            "val_speakers": list(self.val_speakers) if self.val_speakers is not None else None,
            "split_file": self.split_file,
            "allow_speaker_overlap": self.allow_speaker_overlap,
            "allow_single_label_speakers": self.allow_single_label_speakers,
            "skip_bad": self.skip_bad,
            "train": self.train.to_dict(),
            "train_resolved": self.train.resolved(n_corpora=len(self.sources)).to_dict(),
            "tracking_uri": self.tracking_uri,
        }

    @classmethod
    def from_dict(cls, spec: dict, *, where: str = CONFIG_FILE) -> RunConfig:
        """Read a :meth:`to_dict`, or a version-1 ``config.json`` (no format tag).

        Raises:
            ValueError: not a run config, a newer version, an unknown key, or a missing
                ``data``/``encoder``/``train``.
        """
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(spec).__name__}")
        tag, version = spec.get("format", RUN_CONFIG_FORMAT), spec.get("version", 1)
        if tag != RUN_CONFIG_FORMAT:
            raise ValueError(f"{where}: not a run config (format tag {tag!r}, expected {RUN_CONFIG_FORMAT!r})")
        if not isinstance(version, int) or version > RUN_CONFIG_VERSION:
            raise ValueError(
                f"{where}: run config version {version!r} is newer than this speech-emotion reads "
                f"({RUN_CONFIG_VERSION}); upgrade speech-emotion"
            )
        _unknown_keys(where, spec, _CONFIG_KEYS)
        missing = [key for key in ("data", "encoder", "train") if spec.get(key) is None]
        if missing:
            raise ValueError(
                f"{where}: no {', '.join(repr(k) for k in missing)}; only runs made by `ser train` have a config to "
                "read"
            )
        train = TrainConfig.from_dict(spec["train"], where=f"{where}: train")
        speakers = {part: spec.get(part) for part in ("test_speakers", "val_speakers")}
        if isinstance(spec["data"], list):
            sources = tuple(CorpusSource.from_dict(source) for source in spec["data"])
        else:
            sources = (CorpusSource(spec["data"], spec.get("corpus"), spec.get("speaker_pattern")),)
        return cls(
            sources=sources,
            encoder=EncoderRef(reference=spec["encoder"], path=spec.get("encoder_path")),
            train=train,
            precision=str(spec.get("precision", "fp32")),  # written since version 2 files added it; fp32 before
            labels=spec.get("labels"),
            labels_file=spec.get("labels_file"),
            test_speakers=tuple(speakers["test_speakers"]) if speakers["test_speakers"] is not None else None,
            val_speakers=tuple(speakers["val_speakers"]) if speakers["val_speakers"] is not None else None,
            split_file=spec.get("split_file"),
            allow_speaker_overlap=bool(spec.get("allow_speaker_overlap", False)),
            allow_single_label_speakers=bool(spec.get("allow_single_label_speakers", False)),
            skip_bad=bool(spec.get("skip_bad", False)),
            tracking_uri=spec.get("tracking_uri"),
            speech_emotion=spec.get("speech_emotion", "unknown"),
        )

    @classmethod
    def read(cls, run: str | Path) -> RunConfig:
        """``RUN/config.json`` as a :class:`RunConfig`.

        Raises:
            FileNotFoundError: no config.json: not a run folder, or killed before it started.
            ValueError: unreadable JSON or not a run config.
        """
        path = Path(run) / CONFIG_FILE
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: not found; {run} is not a run folder made by `ser train`, or it was killed before it "
                "started: start it again with `ser train ... --out`"
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); start the run again") from None
        return cls.from_dict(spec, where=str(path))


_CONFIG_KEYS = [
    "format",
    "version",
    "speech_emotion",
    "data",
    "corpus",
    "labels",
    "labels_file",
    "speaker_pattern",
    "encoder",
    "encoder_path",
    "precision",
    "test_speakers",
    "val_speakers",
    "split_file",
    "allow_speaker_overlap",
    "allow_single_label_speakers",
    "skip_bad",
    "train",
    "train_resolved",
    "tracking_uri",
]
