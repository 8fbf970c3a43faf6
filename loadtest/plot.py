"""`--plot PATH`: a PNG of final latency (p50, p95, p99; the sweep's spread over repeats
as error bars) and lost + duplicated segments against the number of streams.

Needs matplotlib (the `loadtest` extra); uses the Agg backend (no display). `available()`
says whether it is installed, so the command can refuse --plot before any load is sent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_png(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(doc["levels"], key=lambda r: r["streams"])
    n = [r["streams"] for r in levels]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    for key, label, style in (("p50_final_s", "p50", "o-"), ("p95_final_s", "p95", "s-"),
                              ("p99_final_s", "p99", "^:")):
        ys = [r.get(key) for r in levels]
        xs = [x for x, y in zip(n, ys, strict=True) if y is not None]
        ys = [y for y in ys if y is not None]
        if not ys:
            continue
        spread = [r.get("spread", {}).get(key) for r in levels if r.get(key) is not None]
        if all(s and s.get("n", 0) > 1 for s in spread):
            lo = [y - s["min"] for y, s in zip(ys, spread, strict=True)]
            hi = [s["max"] - y for y, s in zip(ys, spread, strict=True)]
            ax1.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3,
                         label=f"{label} (median, min-max over repeats)")
        else:
            ax1.plot(xs, ys, style, label=label)
    bound = doc.get("bound_s")
    if bound:
        ax1.axhline(bound, color="red", linestyle="--", linewidth=1, label=f"bound {bound:g} s")
    ax1.set_ylabel("final latency (s)\nendpoint due -> final")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title(f"earshot loadtest {doc['mode']}")
    lost = [r["lost"] for r in levels]
    dup = [r["duplicated"] for r in levels]
    width = max(0.4, min(n) * 0.15) if n else 0.4
    ax2.bar([x - width / 2 for x in n], lost, width, label="lost")
    ax2.bar([x + width / 2 for x in n], dup, width, label="duplicated")
    if not any(lost) and not any(dup):
        ax2.text(0.5, 0.5, "0 lost, 0 duplicated at every level", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_ylabel("segments")
    ax2.set_xlabel("concurrent streams")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
