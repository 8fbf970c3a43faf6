"""Report of a load test: repeated runs combined into one level row, the JSON document
(`--json PATH`) and the one-screen text summary. Pure apart from writing the JSON file.

A level row (docs/benchmarks.md, "Load test a box") has at least `streams`,
`segments_expected`, `lost`, `duplicated`, `p50_final_s`, `p95_final_s`; also p99 and the
latencies from speech end and of the first partial, `rtf` (server CPU seconds per second
of audio streamed), `throughput_x` (audio seconds streamed and transcribed per wall
second), `refused_503`, `rate_limited_429`, `server_cpu_cores`, `server_peak_rss_mb`,
`server_p50_final_s` / `server_p95_final_s` (the server's own endpoint -> decoded, from
/api/stats), `send_lag_p95_s` (how late this machine sent its frames), and with
repeats: `repeats` (the number), `runs` (each run's row) and `spread` (median,
min, max, IQR over the runs of the latency figures).
"""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.stats import fmt_s, spread

SUMMED = ("admitted", "refused_503", "refused_after_hello", "rate_limited_429", "failed",
          "reconnects", "segments_expected", "finals_received", "lost", "duplicated",
          "out_of_order",
          "unexpected", "decode_failed", "over_wer", "latency_samples")
SPREAD = ("p50_final_s", "p95_final_s", "p99_final_s", "p50_final_from_speech_s",
          "p95_final_from_speech_s", "p99_final_from_speech_s", "p50_first_partial_s",
          "p95_first_partial_s", "p99_first_partial_s", "wer", "rtf", "throughput_x",
          "server_cpu_cores", "send_lag_p95_s", "refusal_max_s", "refusal_p95_s",
          "server_p50_final_s", "server_p95_final_s")


def combine_repeats(runs: list[dict]) -> dict:
    """One row for a level run `len(runs)` times: counts summed over the runs, latency
    and rate figures as their median over the runs (with `spread`), peak memory the max."""
    first = runs[0]
    row = {"streams": first["streams"], "repeats": len(runs)}
    for key in SUMMED:
        row[key] = sum(r.get(key) or 0 for r in runs)
    row["errors"] = sorted({e for r in runs for e in r.get("errors", [])})[:5]
    row["spread"] = {key: spread([r.get(key) for r in runs]) for key in SPREAD}
    for key in SPREAD:
        row[key] = row["spread"][key]["median"]
    peaks = [r["server_peak_rss_mb"] for r in runs if r.get("server_peak_rss_mb")]
    row["server_peak_rss_mb"] = max(peaks) if peaks else None
    row["audio_s"] = round(sum(r.get("audio_s") or 0 for r in runs), 1)
    row["wall_s"] = round(sum(r.get("wall_s") or 0 for r in runs), 1)
    row["wer_bound"] = first.get("wer_bound")
    row["server_probe"] = first.get("server_probe")
    row["runs"] = runs
    return row


def document(result: dict, command: str, settings: dict) -> dict:
    """The JSON document: the mode's result plus the command line, settings and verdict."""
    return {"command": command, "settings": settings,
            "passed": all(c["ok"] for c in result["checks"]), **result}


def write_json(path: Path, doc: dict) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def _mb(v) -> str:
    return "n/a" if v is None else f"{v:.0f} MB"


def summary(doc: dict) -> str:
    """The text summary: one line per level, then each check's verdict."""
    lines = [f"earshot loadtest {doc['mode']}: {doc['command']}", ""]
    lines.append(f"{'streams':>7} {'admit':>5} {'503':>5} {'429':>4} {'fail':>4} "
                 f"{'segs':>6} {'lost':>4} {'dup':>3} {'ooo':>3} {'WER':>6} "
                 f"{'p50':>7} {'p95':>7} {'p99':>7} {'p95 speech':>10} {'p95 1st part':>12} "
                 f"{'CPU':>5} {'peak mem':>8}")
    for r in doc["levels"]:
        wer = "n/a" if r.get("wer") is None else f"{100 * r['wer']:.1f}%"
        cpu = "n/a" if r.get("server_cpu_cores") is None else f"{r['server_cpu_cores']:.2f}"
        lines.append(
            f"{r['streams']:>7} {r['admitted']:>5} {r['refused_503']:>5} "
            f"{r['rate_limited_429']:>4} {r['failed']:>4} {r['segments_expected']:>6} "
            f"{r['lost']:>4} {r['duplicated']:>3} {r['out_of_order']:>3} {wer:>6} "
            f"{fmt_s(r.get('p50_final_s')):>7} {fmt_s(r.get('p95_final_s')):>7} "
            f"{fmt_s(r.get('p99_final_s')):>7} {fmt_s(r.get('p95_final_from_speech_s')):>10} "
            f"{fmt_s(r.get('p95_first_partial_s')):>12} {cpu:>5} "
            f"{_mb(r.get('server_peak_rss_mb')):>8}")
        if r.get("repeats", 1) > 1:
            s = r["spread"]["p95_final_s"]
            if s["n"]:
                lines.append(f"{'':>7} p95 over {s['n']} runs: median {fmt_s(s['median'])}, "
                             f"min-max {fmt_s(s['min'])}-{fmt_s(s['max'])}, "
                             f"IQR {fmt_s(s['iqr'])}")
        if r.get("errors"):
            lines.append(f"{'':>7} errors: {'; '.join(r['errors'])}")
    if any(r.get("repeats", 1) > 1 for r in doc["levels"]):
        lines.append("(streams: per run; admitted, refused, failed and segment counts: "
                     "totals over a level's runs; latencies: medians of the runs)")
    lines.append("")
    lines += [f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}"
              for c in doc["checks"]]
    lines.append(f"latency: p50/p95/p99 final = endpoint due (speech end + "
                 f"{doc['settings'].get('endpoint_ms', 600):g} ms) -> final; "
                 "'p95 speech' from the speech end; CPU in cores (1.0 = one core busy)")
    return "\n".join(lines)
