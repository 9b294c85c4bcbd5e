"""Several corpora in one run: each keeps its own adapter, and speakers are namespaced by corpus.

A source is given as ``PATH`` (adapter detected) or ``PATH::ADAPTER`` (e.g. ``data/tess::tess``).
A corpus's name is its adapter for the corpora the toolkit knows by their file names (``ravdess``,
``tess``, ``crema-d``, ``savee``, ``emodb``) and the folder's name for a folder per label or a CSV
table (``turev-db-16k`` for ``turev-db-16k/metadata.csv``). With more than one source every
speaker id becomes ``NAME:SPEAKER`` (``tess:OAF``), so two corpora's speaker ``01`` never meet, and
every utterance's ``corpus`` is that name. One source reads exactly as :func:`read_corpus` does.

Example:
    >>> CorpusSource.parse("corpora/tess-16k::tess")
    CorpusSource(path='corpora/tess-16k', adapter='tess', speaker_pattern=None)
    >>> CorpusSource.parse("a::b::c")
    Traceback (most recent call last):
    ...
    speech_emotion.errors.CorpusError: 'a::b::c': expected PATH or PATH::ADAPTER (adapters: ravdess, crema-d, tess,
    savee, emodb, folder, csv)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from speech_emotion.data.corpora import CORPORA, read_corpus
from speech_emotion.data.manifest import Manifest, Utterance
from speech_emotion.errors import CorpusError

SEPARATOR = "::"
NAMESPACE = ":"
"""Between a corpus name and a speaker id: ``tess:OAF``."""


@dataclass(frozen=True)
class CorpusSource:
    """One corpus of a run: where it is and how to read it.

    Attributes:
        path: a corpus folder or a CSV/TSV table.
        adapter: one of :data:`~speech_emotion.data.corpora.CORPORA`; None to detect it.
        speaker_pattern: for a folder per label, the regex that finds the speaker in a file name.
    """

    path: str
    adapter: str | None = None
    speaker_pattern: str | None = None

    @classmethod
    def parse(cls, text: str | Path, *, speaker_pattern: str | None = None) -> CorpusSource:
        """``PATH`` or ``PATH::ADAPTER``.

        Raises:
            CorpusError: more than one ``::`` or an unknown adapter.
        """
        parts = str(text).split(SEPARATOR)
        if len(parts) > 2 or not parts[0] or (len(parts) == 2 and parts[1] not in CORPORA):
            raise CorpusError(f"{str(text)!r}: expected PATH or PATH::ADAPTER (adapters: {', '.join(CORPORA)})")
        return cls(parts[0], parts[1] if len(parts) == 2 else None, speaker_pattern)

    def to_dict(self) -> dict:
        return {"path": self.path, "adapter": self.adapter, "speaker_pattern": self.speaker_pattern}

    @classmethod
    def from_dict(cls, spec: dict) -> CorpusSource:
        unknown = set(spec) - {"path", "adapter", "speaker_pattern"}
        if unknown or "path" not in spec:
            raise CorpusError(f"a corpus source has keys path, adapter, speaker_pattern; got {sorted(spec)}")
        return cls(str(spec["path"]), spec.get("adapter"), spec.get("speaker_pattern"))

    def absolute(self) -> CorpusSource:
        return replace(self, path=str(Path(self.path).resolve()))


def as_sources(
    data: str | Path | Sequence[str | Path | CorpusSource],
    *,
    corpus: str | None = None,
    speaker_pattern: str | None = None,
) -> list[CorpusSource]:
    """What :func:`load_dataset` takes as ``data``, as a list of sources (``corpus`` applies to a single one)."""
    if isinstance(data, (str, Path)):
        return [CorpusSource(str(data), corpus, speaker_pattern)]
    if corpus is not None and len(data) > 1:
        raise CorpusError(f"--corpus {corpus} names one adapter for {len(data)} corpora; write each as PATH::ADAPTER")
    if corpus is not None:
        return as_sources(data[0], corpus=corpus, speaker_pattern=speaker_pattern)
    return [
        item if isinstance(item, CorpusSource) else CorpusSource.parse(item, speaker_pattern=speaker_pattern)
        for item in data
    ]


def corpus_name(source: CorpusSource, manifest: Manifest) -> str:
    """The name a corpus's speakers are namespaced with (see the module docstring)."""
    adapters = {u.corpus for u in manifest}
    if len(adapters) == 1 and not adapters & {"folder", "csv"}:
        return adapters.pop()
    path = Path(source.path)
    return (path.parent if path.is_file() or path.suffix.lower() in (".csv", ".tsv") else path).resolve().name


def read_corpora(sources: Sequence[CorpusSource]) -> Manifest:
    """One manifest over several corpora; with more than one, speakers and corpora are namespaced.

    Raises:
        CorpusError: no source, a source that cannot be read, or two corpora with the same name.
    """
    if not sources:
        raise CorpusError("no corpus given; pass at least one corpus folder or CSV/TSV manifest")
    manifests = [read_corpus(s.path, corpus=s.adapter, speaker_pattern=s.speaker_pattern) for s in sources]
    if len(manifests) == 1:
        return manifests[0]
    names = [corpus_name(source, manifest) for source, manifest in zip(sources, manifests)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        listed = "; ".join(f"{s.path} is {n!r}" for s, n in zip(sources, names) if n in repeated)
        raise CorpusError(
            f"two corpora share the name {', '.join(repeated)} ({listed}); speakers are namespaced by corpus name, so "
            "give each corpus its own folder name"
        )
    utterances, problems, synonyms = [], [], {}
    for name, manifest in zip(names, manifests):
        utterances += [
            Utterance(u.path, f"{name}{NAMESPACE}{u.speaker}", u.label, name, {**u.fields, "adapter": u.corpus})
            for u in manifest
        ]
        problems += manifest.problems
        synonyms |= manifest.synonyms
    return Manifest(sorted(utterances, key=lambda u: u.path), problems, synonyms)


def plain_speaker(speaker: str, corpus: str) -> str:
    """The speaker id without its corpus namespace (``tess:OAF`` → ``OAF``); a plain id is returned as is.

    >>> plain_speaker("tess:OAF", "tess"), plain_speaker("05", "ravdess")
    ('OAF', '05')
    """
    prefix = f"{corpus}{NAMESPACE}"
    return speaker[len(prefix) :] if speaker.startswith(prefix) else speaker
