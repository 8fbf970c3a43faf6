"""The laptop bundle's size and its time from launch to the first final, cold and warm.

    python bench/bundle_startup.py [--bundle dist/earshot] [--runs 5] [--audio FILE]

Size: the unpacked folder (bytes of regular files) and a .tar.gz of it (made here with
Python's tarfile at the default level, like `dev.py package`). Time: the bundle is copied to
a fresh folder outside the repo and launched as a user would, with a clean environment
(`env -i` + a new HOME, QT_QPA_PLATFORM=offscreen):
    earshot --audio-file FILE --fast --quit-when-done --transcript-out T
"first final" is when T appears (the app writes it right after the final of the one-utterance
file arrives); "exit" is when the process ends. Run 1 is "cold": a new copy and a new HOME
(no Qt or font caches), after dropping the page cache when this user may
(/proc/sys/vm/drop_caches; the output says whether it could). Runs 2+ are "warm": same
copy, same HOME, files in the page cache. Prints a markdown table. Never imports tests/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO / "tests" / "data" / "speech" / "sherpa-test-wavs" / "0.wav"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def launch(exe: Path, audio: Path, home: Path, out: Path,
           extra_env: dict | None = None) -> tuple[float, float]:
    """(seconds to the transcript file, seconds to exit) of one scripted run."""
    home.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen",
           "XDG_RUNTIME_DIR": str(home), **(extra_env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen([str(exe), "--audio-file", str(audio), "--fast",
                             "--quit-when-done", "--transcript-out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and out.exists():
            first = time.perf_counter() - start
        time.sleep(0.005)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return (first if first is not None else total), total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "dist" / "earshot")
    ap.add_argument("--runs", type=int, default=5, help="warm runs after the cold one")
    ap.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    ap.add_argument("--venv", action="store_true", help="also time the same run with the "
                    "repo's .venv/bin/earshot (not frozen; models from $EARSHOT_MODELS_DIR)")
    args = ap.parse_args()
    if not (args.bundle / "earshot").is_file():
        raise SystemExit(f"no bundle at {args.bundle}: run `python3 dev.py package` first")
    work = Path(tempfile.mkdtemp(prefix="earshot-bundle-bench-"))
    try:
        unpacked = folder_bytes(args.bundle)
        tar = work / "earshot.tar.gz"
        t0 = time.perf_counter()
        with tarfile.open(tar, "w:gz") as out:
            out.add(args.bundle, arcname="earshot")
        tar_s = time.perf_counter() - t0
        tar_size = tar.stat().st_size
        copy = work / "unpacked" / "earshot"
        shutil.copytree(args.bundle, copy, symlinks=True)
        dropped = drop_caches()
        cold = launch(copy / "earshot", args.audio, work / "home", work / "t.txt")
        warm = [launch(copy / "earshot", args.audio, work / "home", work / "t.txt")
                for _ in range(args.runs)]
        venv = []
        if args.venv:
            models = {"EARSHOT_MODELS_DIR": os.environ.get("EARSHOT_MODELS_DIR", "")}
            venv = [launch(REPO / ".venv" / "bin" / "earshot", args.audio, work / "vhome",
                           work / "t.txt", models) for _ in range(args.runs + 1)][1:]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def spread(xs: list[float]) -> str:
        return (f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, "
                f"n={len(xs)})")

    print(f"| bundle | {args.bundle} |")
    print("|---|---|")
    print(f"| unpacked | {unpacked / 1e6:.0f} MB ({unpacked / 2**20:.0f} MiB) |")
    print(f"| .tar.gz | {tar_size / 1e6:.0f} MB (gzip level 9, {tar_s:.0f} s to make) |")
    print(f"| audio | {args.audio.name} |")
    print(f"| cold: launch -> first final / exit | {cold[0]:.2f} s / {cold[1]:.2f} s "
          f"(page cache {'dropped' if dropped else 'NOT dropped: not permitted here'}) |")
    print(f"| warm: launch -> first final | {spread([w[0] for w in warm])} |")
    print(f"| warm: launch -> exit | {spread([w[1] for w in warm])} |")
    if venv:
        print(f"| not frozen (.venv), warm: launch -> first final | "
              f"{spread([v[0] for v in venv])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
