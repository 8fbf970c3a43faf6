"""Word error rate against reference transcripts, with Whisper's English normaliser.

Reads a transcripts.tsv (`set`, `path`, `transcript`; paths relative to the TSV's folder).
Pure apart from reading the TSV.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

_normalizer = EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Case, punctuation, spelling and number normalisation (Whisper's English rules)."""
    return " ".join(_normalizer(text).split())


@dataclass(frozen=True)
class Reference:
    set: str
    path: Path
    transcript: str


def read_references(tsv: Path) -> list[Reference]:
    """Rows of a transcripts.tsv. Raises ValueError for a file without the three columns."""
    tsv = Path(tsv)
    with tsv.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"set", "path", "transcript"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{tsv}: missing column(s) {', '.join(sorted(missing))}")
        return [Reference(r["set"], tsv.parent / r["path"], r["transcript"]) for r in reader]


@dataclass(frozen=True)
class WerScore:
    wer: float
    words: int
    errors: int


def word_error_rate(references: list[str], hypotheses: list[str]) -> WerScore:
    """Corpus WER after normalisation (substitutions + deletions + insertions / words)."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    words = sum(len(r.split()) for r in refs)
    if words == 0:
        return WerScore(0.0, 0, 0)
    keep = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    out = jiwer.process_words([r for r, _ in keep], [h for _, h in keep])
    errors = out.substitutions + out.deletions + out.insertions
    errors += sum(len(h.split()) for r, h in zip(refs, hyps, strict=True) if not r)
    return WerScore(errors / words, words, errors)
