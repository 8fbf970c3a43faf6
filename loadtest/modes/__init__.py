"""Load-test modes. Each module has `DEFAULT_STREAMS` and `run(ctx) -> dict` returning
{"mode", "levels": [rows], "checks": [{"name", "ok", "detail"}], ...}; a run passes when
every check is ok. Modes run on the main thread (each level runs its own asyncio loop)."""

from __future__ import annotations

from types import ModuleType


def check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def get(mode: str) -> ModuleType:
    from loadtest.modes import chaos, failover, herd, slowloris, sweep

    return {"sweep": sweep, "herd": herd, "slowloris": slowloris, "chaos": chaos,
            "failover": failover}[mode]


MODES = ("sweep", "herd", "slowloris", "chaos", "failover")
