"""Model forms compared: size, session creation, speed, accuracy, batch invariance.

    python -m bench.model_forms [--models-dir DIR] [--threads 1] [--reps 5] [--batch 8]
                                [--models moonshine-tiny-en,moonshine-base-en]

For each Moonshine model, every form is built from the shipped files with the recipes of
`models.prepare` (written to a temporary folder; the `.ort` files as shipped are the
int8 form) and run through one small greedy decoder (this file's `FormRunner`, the same
loop the engine runs: batched decoder over padded encoder states with
`encoder_attention_mask` where the decoder has one). Workload: the dev sentences
(sherpa-test-wavs, librispeech-test-clean-kw, pocketsphinx-testdata), 1 intra-op thread.

Reported per form: file sizes, session creation time, real-time factor one by one and in
padded batches (median over `--reps` repetitions, with min-max), word error rate one by
one (Whisper's English normaliser), and how many clips decode to different tokens in a
padded batch than alone (0 = batch invariant).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models_env import default_dev_dir

REPO = Path(__file__).resolve().parents[1]
SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")
DEFAULT_DEV = default_dev_dir()
MASK_STRIDE = 384
BOS, EOS = 1, 2


def token_budget(samples: int) -> int:
    """The engine's cap: 8 + 6.5 tokens per second of audio."""
    return 8 + math.ceil(samples / 16_000 * 6.5)


class FormRunner:
    """Encoder + merged KV-cache decoder sessions of one model form; greedy decoding.

    Not thread-safe. `decode` keeps every row in the batch until all have ended (simpler
    than the engine, which drops finished rows; a row's numbers are the same either way
    when the form is batch invariant).
    """

    def __init__(self, encoder: Path, decoder: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        start = time.perf_counter()
        self.encoder = ort.InferenceSession(str(encoder), opts,
                                            providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(decoder), opts,
                                            providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - start
        self.encoder_mask = "attention_mask" in {i.name for i in self.encoder.get_inputs()}
        inputs = {i.name: i.shape for i in self.decoder.get_inputs()}
        self.has_mask = "encoder_attention_mask" in inputs
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        shape = inputs["past_key_values.0.decoder.key"]
        self.heads, self.head_dim = int(shape[1]), int(shape[3])
        self.outputs = [o.name for o in self.decoder.get_outputs()]

    def encode(self, audio: np.ndarray) -> np.ndarray:
        audio = np.pad(audio, (0, max(0, 1_600 - len(audio)))).astype(np.float32)
        feed = {"input_values": audio[None]}
        if self.encoder_mask:
            feed["attention_mask"] = np.ones((1, len(audio)), np.int64)
        return self.encoder.run(None, feed)[0][0]

    def decode(self, hidden: list[np.ndarray], budgets: list[int],
               keep_logits: bool = False) -> tuple[list[list[int]], list[list[np.ndarray]]]:
        """Greedy tokens per row (no BOS/EOS) and, if asked, each step's logits per row."""
        rows, frames = len(hidden), max(h.shape[0] for h in hidden)
        if rows > 1 and not self.has_mask and any(h.shape[0] != frames for h in hidden):
            raise ValueError("this decoder has no encoder_attention_mask: equal lengths only")
        states = np.zeros((rows, frames, hidden[0].shape[1]), np.float32)
        mask = np.zeros((rows, frames * MASK_STRIDE), np.int64)
        for r, h in enumerate(hidden):
            states[r, : h.shape[0]] = h
            mask[r, : h.shape[0] * MASK_STRIDE] = 1
        empty = np.zeros((rows, self.heads, 0, self.head_dim), np.float32)
        past = {n: empty for n in self.past_names}
        ids = np.full((rows, 1), BOS, np.int64)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logits: list[list[np.ndarray]] = [[] for _ in range(rows)]
        done = [False] * rows
        for step in range(max(budgets)):
            feed = {"input_ids": ids, "encoder_hidden_states": states,
                    "use_cache_branch": np.array([step > 0]), **past}
            if self.has_mask:
                feed["encoder_attention_mask"] = mask
            out = dict(zip(self.outputs, self.decoder.run(None, feed), strict=True))
            last = out["logits"][:, -1, :]
            nxt = last.argmax(-1)
            for r in range(rows):
                if done[r]:
                    continue
                if keep_logits:
                    logits[r].append(last[r].copy())
                if nxt[r] == EOS or step >= budgets[r]:
                    done[r] = True
                else:
                    tokens[r].append(int(nxt[r]))
            if all(done):
                break
            for n in self.past_names:
                if ".decoder." in n or step == 0:
                    past[n] = out[n.replace("past_key_values", "present")]
            ids = nxt.reshape(-1, 1).astype(np.int64)
        return tokens, logits

    def transcribe(self, clips: list[np.ndarray], batch: int = 1) -> list[list[int]]:
        """Token ids per clip; clips decoded `batch` at a time in the given order."""
        out: list[list[int]] = []
        for i in range(0, len(clips), batch):
            group = clips[i : i + batch]
            hidden = [self.encode(c) for c in group]
            out += self.decode(hidden, [token_budget(len(c)) for c in group])[0]
        return out


def shipped_folder(model_id: str, models_dir: Path | None) -> Path | None:
    """`models_dir/<id>`, or (None) the folder the model store finds the shipped files in."""
    if models_dir is not None:
        return models_dir / model_id
    from models.store import ModelNotReadyError, require_model

    try:
        return require_model(model_id)
    except ModelNotReadyError:
        return None


def build_forms(models_dir: Path | None, work: Path,
                wanted: list[str]) -> dict[str, dict[str, tuple[Path, Path, Path]]]:
    """model id -> form name -> (encoder, decoder, tokenizer), preparing into `work`."""
    from models.prepare import prepare_file

    recipes = {
        "moonshine-tiny-en": {"int8 (shipped)": None, "float (int8 weights)": ("float", "float"),
                              "float (fp32 weights)": ("float+fp32", "float+fp32")},
        "moonshine-base-en": {"as shipped": None,
                              "float (int8 weights)": ("float", "float+mask"),
                              "float (fp32 weights)": ("float+fp32", "float+mask+fp32")},
    }
    forms: dict[str, dict[str, tuple[Path, Path, Path]]] = {}
    for model_id, named in recipes.items():
        if model_id not in wanted:
            continue
        src = shipped_folder(model_id, models_dir)
        if src is None or not (src / "decoder_model_merged.ort").is_file():
            print(f"{model_id}: shipped files not found, skipped", file=sys.stderr)
            continue
        forms[model_id] = {}
        for name, pair in named.items():
            enc, dec = src / "encoder_model.ort", src / "decoder_model_merged.ort"
            if pair is not None:
                tag = pair[1].replace("+", "_")
                enc_out = work / f"{model_id}.enc.{tag}.onnx"
                dec_out = work / f"{model_id}.dec.{tag}.onnx"
                prepare_file(enc, pair[0], enc_out)
                prepare_file(dec, pair[1], dec_out)
                enc, dec = enc_out, dec_out
            forms[model_id][name] = (enc, dec, src / "tokenizer.bin")
    return forms


def wer(runner: FormRunner, tokenizer: Path, clips: list[np.ndarray], refs: list[str]) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    from edge_server.engine.moonshine_tokenizer import MoonshineTokenizer

    tok = MoonshineTokenizer.from_file(tokenizer)
    norm = EnglishTextNormalizer()
    hyps = [norm(tok.decode(t)) for t in runner.transcribe(clips)]
    return jiwer.wer([norm(r) for r in refs], hyps)


def timed(run) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of `run()`.

    With 1 intra-op thread ONNX Runtime computes in the calling thread, so CPU time is
    what the form costs even when other work shares the cores (wall time is given too).
    """
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path,
                    help="folder holding <id>/<shipped files> (default: the model store's)")
    ap.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", default="moonshine-tiny-en,moonshine-base-en")
    args = ap.parse_args()

    from edge_server.audio import read_audio

    with (args.dev / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["set"] in SETS]
    clips = [read_audio(args.dev / r["path"]) for r in rows]
    refs = [r["transcript"] for r in rows]
    # batches of similar length, as the engine plans them (padding is then small)
    by_length = sorted(clips, key=len)
    audio_s = sum(len(c) for c in clips) / 16_000
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, "
          f"Python {platform.python_version()}; {args.threads} thread(s); {len(clips)} clips, "
          f"{audio_s:.1f} s of audio; {args.reps} reps interleaved across forms; "
          "RTF = CPU seconds / audio seconds, median (min-max); wall RTF median")
    print(f"| model | form | files MB | load s | RTF 1-by-1 | wall | RTF batch {args.batch} "
          "| wall | WER % | batch-variant clips |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="earshot-forms-") as tmp:
        forms = build_forms(args.models_dir, Path(tmp), args.models.split(","))
        for model_id, named in forms.items():
            runners = {name: FormRunner(enc, dec, args.threads)
                       for name, (enc, dec, _) in named.items()}
            variant: dict[str, str] = {}
            for name, runner in runners.items():  # warm-up, and the invariance count
                alone = runner.transcribe(clips)
                variant[name] = "-"
                if runner.has_mask:
                    batched = runner.transcribe(clips, args.batch)
                    variant[name] = str(sum(a != b for a, b in zip(alone, batched,
                                                                    strict=True)))
            one: dict[str, list[tuple[float, float]]] = {n: [] for n in runners}
            many: dict[str, list[tuple[float, float]]] = {n: [] for n in runners}
            for _ in range(args.reps):
                for name, runner in runners.items():
                    one[name].append(timed(lambda r=runner: r.transcribe(clips)))
                    if runner.has_mask:
                        many[name].append(timed(
                            lambda r=runner: r.transcribe(by_length, args.batch)))
            for name, runner in runners.items():
                enc, dec, tok = named[name]
                size = (enc.stat().st_size + dec.stat().st_size) / 1e6
                error = wer(runner, tok, clips, refs) * 100

                def rtf(samples: list[tuple[float, float]], k: int) -> list[float]:
                    return [s[k] / audio_s for s in samples]

                wall1 = statistics.median(rtf(one[name], 1))
                wallb = f"{statistics.median(rtf(many[name], 1)):.4f}" if many[name] else "-"
                print(f"| {model_id} | {name} | {size:.1f} | {runner.load_s:.2f} | "
                      f"{spread(rtf(one[name], 0))} | {wall1:.4f} | "
                      f"{spread(rtf(many[name], 0))} | {wallb} | {error:.2f} | "
                      f"{variant[name]} |", flush=True)


if __name__ == "__main__":
    main()
