"""`failover`: app-style clients (the desktop app's `Dictation`: preferred server first,
a local server as fallback, audio not yet covered by a final replayed there) while the
preferred server is stopped mid-run.

The preferred server is the one under test: with `--server local` the one started here,
stopped after `--stop-after` seconds (default half of --seconds) with SIGTERM (a drain,
as when a box shuts down; `--stop-signal kill` for kill -9); a remote one is stopped by
`--stop-cmd CMD` (a shell command run then). The fallback is `--fallback URL`, or by
default a second `earshot-server` started here on 127.0.0.1 (the app's embedded server
runs the same code). Each client feeds its audio at real time (`--streams`, default 2).

Checks: every client finished; no expected segment lost or duplicated; and every
reference word the model gets right undisturbed is in the client's transcript. The
undisturbed transcript is the fallback server's on the same audio streamed fast after
the run; words it misses too are the model's, reported as `model_missed_words`, not
failover's (`words_lost_to_failover`).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections import Counter

from desktop.dictation import Dictation, DictationListener, Endpoint, FinalText
from desktop.stream_client import StreamClient, StreamError
from edge_server.evaluation import normalize
from loadtest.accounting import Account, account
from loadtest.client import FRAME, Received
from loadtest.context import Context
from loadtest.local_server import LocalServer
from loadtest.modes import check
from loadtest.pacing import Pacer
from loadtest.speech import RATE, Script, build_scripts
from loadtest.stats import percentiles
from loadtest.target import Target, check_url

DEFAULT_STREAMS = 2


class _Listener(DictationListener):
    def __init__(self) -> None:
        self.finals: list[tuple[float, FinalText]] = []
        self.endpoints: list[str] = []

    def on_final(self, final: FinalText) -> None:
        self.finals.append((time.monotonic(), final))

    def on_state(self, state: str, endpoint: Endpoint | None, detail: str = "") -> None:
        if endpoint is not None and state in ("connected", "fallback") and (
                not self.endpoints or self.endpoints[-1] != endpoint.name):
            self.endpoints.append(endpoint.name)


async def _client(endpoints: list[Endpoint], script: Script, progress) -> dict:
    listener = _Listener()
    dictation = Dictation(endpoints, listener)
    pacer = Pacer(FRAME, RATE)
    error = None
    try:
        await dictation.start()
        frames = (len(script.audio) + FRAME - 1) // FRAME
        for i in range(frames):
            await pacer.wait(i)
            dictation.feed(script.audio[i * FRAME:(i + 1) * FRAME])
            if progress is not None and i % 10 == 9:
                progress(1.0)
        if progress is not None:
            progress(len(script.audio) / RATE - frames // 10)
        await dictation.finish()
    except Exception as exc:  # DictationFailed, StreamError: reported, not raised
        error = f"{type(exc).__name__}: {exc}"
        await dictation.abort()
    return {"listener": listener, "t0": pacer.t0, "error": error,
            "failovers": dictation.failovers}


async def _undisturbed(url: str, script: Script) -> str:
    """The fallback server's transcript of the script streamed as fast as it takes it."""
    client = StreamClient(url, partials=False)
    await client.connect()
    try:
        for i in range(0, len(script.audio), FRAME * 10):
            await client.send_audio(script.audio[i:i + FRAME * 10])
            await asyncio.sleep(0)
        finals = await client.finish(timeout_s=120)
    finally:
        await client.close()
    return " ".join(f.text for f in finals)


def _words(text: str) -> Counter:
    return Counter(normalize(text).split())


def _stop_primary(ctx: Context, target: Target) -> dict:
    a = ctx.args
    at = time.monotonic()
    if target.server is not None:
        sig = signal.SIGKILL if a.stop_signal == "kill" else signal.SIGTERM
        rc = target.server.stop(sig)
        return {"at": at, "how": f"signal {sig.name}", "rc": rc}
    proc = subprocess.run(a.stop_cmd, shell=True, capture_output=True, text=True, timeout=120)
    return {"at": at, "how": a.stop_cmd, "rc": proc.returncode}


def run(ctx: Context) -> dict:
    a = ctx.args
    if not ctx.local and not a.stop_cmd:
        raise ValueError("failover against a remote server needs --stop-cmd CMD (how to "
                         "stop it mid-run)")
    n = a.streams or DEFAULT_STREAMS
    stop_after = a.stop_after if a.stop_after is not None else a.seconds / 2
    fallback_server = None
    if a.fallback in (None, "local"):
        fallback_server = LocalServer(["--workers", "1"]).start()
        fallback_url = fallback_server.url
    else:
        fallback_url = check_url(a.fallback)
    target = ctx.open()
    stopped: dict = {}
    try:
        scripts = build_scripts(ctx.clips, n, a.seconds, seed=a.seed)
        endpoints = [Endpoint("server under test", target.url, token=a.token,
                              fingerprint=a.fingerprint),
                     Endpoint("fallback", fallback_url, token=a.fallback_token, local=True)]
        ctx.progress.stage(f"failover {n} clients, stop after {stop_after:g} s",
                           sum(s.seconds for s in scripts))
        timer = threading.Timer(stop_after, lambda: stopped.update(_stop_primary(ctx, target)))
        timer.start()

        async def main() -> list[dict]:
            return list(await asyncio.gather(*(_client(endpoints, s, ctx.progress.update)
                                               for s in scripts)))

        started = time.monotonic()
        results = asyncio.run(main())
        wall = time.monotonic() - started
        timer.join()
        undisturbed = [asyncio.run(_undisturbed(fallback_url, s)) for s in scripts]
    except StreamError as exc:
        raise ValueError(f"the fallback server did not take a stream: {exc}") from None
    finally:
        ctx.close(target)
        if fallback_server is not None:
            fallback_server.stop()
    total = Account()
    clients = []
    lost_words = model_missed = failed = 0
    for script, res, base in zip(scripts, results, undisturbed, strict=True):
        finals = [Received(f.index, f.start, f.end, f.text, f.error, at)
                  for at, f in res["listener"].finals]
        acc = account(script.segments, finals, res["t0"], target.endpoint_s, None, a.wer_bound)
        total = total.add(acc)
        ref = _words(" ".join(e.text or "" for e in script.segments))
        got, base_words = _words(acc.transcript), _words(base)
        missed_base = ref - base_words
        missed_run = ref - got
        to_failover = missed_run - missed_base
        lost_words += sum(to_failover.values())
        model_missed += sum(missed_base.values())
        failed += res["error"] is not None
        clients.append({"endpoints": res["listener"].endpoints, "failovers": res["failovers"],
                        "error": res["error"], "segments": acc.expected, "lost": acc.lost,
                        "reference_words": sum(ref.values()),
                        "missing_words": sum(missed_run.values()),
                        "words_lost_to_failover": sorted(to_failover.elements()),
                        "model_missed_words": sum(missed_base.values())})
    row = {"streams": n, "admitted": n - failed, "refused_503": 0, "rate_limited_429": 0,
           "failed": failed, "segments_expected": total.expected,
           "finals_received": total.received, "lost": total.lost,
           "duplicated": total.duplicated, "out_of_order": total.out_of_order,
           "unexpected": total.unexpected, "decode_failed": total.decode_failed,
           "over_wer": total.over_wer,
           "wer": None if total.wer is None else round(total.wer, 4)}
    for name, values in (("final", total.final_s),
                         ("final_from_speech", total.final_from_speech_s)):
        for q, v in percentiles(values).items():
            row[f"{q}_{name}_s"] = v
    row |= {"wall_s": round(wall, 1), "stopped": stopped, "stop_after_s": stop_after,
            "words_lost_to_failover": lost_words, "model_missed_words": model_missed,
            "clients": clients}
    switched = sum(1 for c in clients if len(c["endpoints"]) > 1)
    checks = [
        check("the server was stopped mid-run", bool(stopped),
              f"{stopped.get('how', 'not stopped')} after {stop_after:g} s; "
              f"{switched}/{n} clients moved to the fallback"),
        check("every client's transcript holds every reference word",
              failed == 0 and total.lost == 0 and total.duplicated == 0 and lost_words == 0,
              f"{failed} failed clients, {total.lost} lost and {total.duplicated} duplicated "
              f"segments of {total.expected}; {lost_words} words lost to failover "
              f"({model_missed} words the model misses undisturbed too)"),
    ]
    return {"mode": "failover", "levels": [row], "checks": checks}
