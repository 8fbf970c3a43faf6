"""How padding rules and the first-token rule change errors on short utterances.

    python -m bench.short_utterances [--set moonshine-alphanumeric] [--model ID ...]
        [--dev DIR] [--json OUT]

For each model and each rule (how a clip is padded with zeros before the encoder, and
whether the decoder may end on its first token), decodes every clip of the chosen sets one
by one on CPU and prints word errors (Whisper's normaliser, as `earshot eval`). The row
"end to 2 s, first token never EOS" is the engine's own behaviour; the others replace its
padding (`moonshine.padded_for_encoder`) for the run. Deterministic: one pass per cell.
The default set is the optional 220 one-second letters and digits of ../shared.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import numpy as np

from bench.models_env import default_dev_dir, default_models_dir

os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())

RATE = 16_000
Pad = Callable[[np.ndarray], np.ndarray]


def zeros(n: float) -> np.ndarray:
    return np.zeros(int(n * RATE), np.float32)


def fixed(before: float, after: float) -> Pad:
    return lambda a: np.concatenate([zeros(before), a, zeros(after)])


def to_length(seconds: float, where: str) -> Pad:
    """Pad to `seconds` in all: the missing length at the start, end or half each side."""
    def pad(a: np.ndarray) -> np.ndarray:
        n = max(0, int(seconds * RATE) - len(a))
        head = {"start": n, "end": 0, "both": n // 2}[where]
        return np.concatenate([np.zeros(head, np.float32), a, np.zeros(n - head, np.float32)])
    return pad


RULES: list[tuple[str, Pad]] = [
    ("none", lambda a: a),
    ("0.1 s before and after", fixed(0.1, 0.1)),
    ("0.3 s before, 0.2 s after", fixed(0.3, 0.2)),
    ("1 s before and after", fixed(1.0, 1.0)),
    ("to 2 s at the start", to_length(2.0, "start")),
    ("to 2 s on both sides", to_length(2.0, "both")),
] + [(f"to {s:g} s at the end", to_length(s, "end")) for s in (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)]


def main() -> None:
    from edge_server.audio import read_audio
    from edge_server.engine import create_engine, moonshine
    from edge_server.evaluation import read_references, word_error_rate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=str, default=str(default_dev_dir()))
    ap.add_argument("--set", action="append", dest="sets")
    ap.add_argument("--model", action="append", dest="models")
    ap.add_argument("--json", type=str)
    args = ap.parse_args()
    sets = args.sets or ["moonshine-alphanumeric"]
    models = args.models or ["moonshine-tiny-en", "moonshine-base-en"]
    refs = [r for r in read_references(os.path.join(args.dev, "transcripts.tsv"))
            if r.set in sets]
    if not refs:
        raise SystemExit(f"no clips of {', '.join(sets)} under {args.dev}")
    audios = [read_audio(r.path) for r in refs]
    words = word_error_rate([r.transcript for r in refs], [r.transcript for r in refs]).words
    print(f"{len(refs)} clips, {words} words ({', '.join(sets)}); CPU, one by one")
    engines = {m: create_engine(m, device="cpu") for m in models}
    results = []
    own = moonshine.padded_for_encoder
    try:
        for name, pad in RULES:
            for rule in (False, True):
                row = {"padding": name, "first_token_never_eos": rule}
                for model, engine in engines.items():
                    engine.first_token_never_eos = rule
                    moonshine.padded_for_encoder = pad
                    texts = [engine.transcribe(a) for a in audios]
                    score = word_error_rate([r.transcript for r in refs], texts)
                    row[model] = score.errors
                results.append(row)
                print(f"| {name} | {'yes' if rule else 'no'} | "
                      + " | ".join(str(row[m]) for m in models) + " |", flush=True)
        moonshine.padded_for_encoder = own
        for engine in engines.values():
            engine.first_token_never_eos = True
        as_shipped = {m: word_error_rate([r.transcript for r in refs],
                                         [e.transcribe(a) for a in audios]).errors
                      for m, e in engines.items()}
        print("| the engine as it is (end to 2 s, rule on) | yes | "
              + " | ".join(str(as_shipped[m]) for m in models) + " |")
    finally:
        moonshine.padded_for_encoder = own
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"sets": sets, "words": words, "rows": results}, fh, indent=1)


if __name__ == "__main__":
    main()
