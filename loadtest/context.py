"""What every mode gets: the parsed options, the reference clips, a progress bar, and a
way to open the server under test (`--server local`: a fresh `earshot-server` per call;
a URL: that server, checked by `preflight` once). Used from the main thread only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from loadtest.local_server import LocalServer, parse_setting
from loadtest.speech import Clip
from loadtest.target import DEFAULT_ENDPOINT_S, Target, check_url, preflight


class Progress:
    """A tqdm bar over seconds of audio streamed (none with --no-progress or without
    tqdm); `update` may be called from the loop thread."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=0, unit="s", unit_scale=False, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                       "audio [{elapsed}<{remaining}]")

    def stage(self, desc: str, seconds: float) -> None:
        if self.bar is not None:
            self.bar.set_description_str(desc)
            self.bar.total = (self.bar.total or 0) + seconds
            self.bar.refresh()

    def update(self, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(seconds)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Context:
    args: argparse.Namespace
    clips: list[Clip]
    progress: Progress
    notes: list[str] = field(default_factory=list)
    _checked: bool = False

    @property
    def local(self) -> bool:
        return self.args.server == "local"

    def server_settings(self) -> dict:
        settings = dict(parse_setting(s) for s in self.args.server_setting or [])
        if self.args.hello_timeout is not None:
            settings.setdefault("handshake_timeout_s", self.args.hello_timeout)
        return settings

    def local_args(self, max_sessions: int | None = None, workers: int | None = None) -> list[str]:
        a = self.args
        out = ["--workers", str(workers or a.workers or 1)]
        if a.threads:
            out += ["--threads", str(a.threads)]
        if a.endpoint_ms != DEFAULT_ENDPOINT_S * 1000:
            out += ["--endpoint-ms", str(a.endpoint_ms)]
        sessions = a.max_sessions or max_sessions
        if sessions:
            out += ["--max-sessions", str(sessions)]
        return out

    def open(self, max_sessions: int | None = None, workers: int | None = None) -> Target:
        """The server under test, ready (a local one is started here: close() it)."""
        a = self.args
        if self.local:
            settings = self.server_settings()
            server = LocalServer(self.local_args(max_sessions, workers), settings,
                                 a.server_config).start()
            return Target(server.url, token=a.token, server=server,
                          endpoint_s=a.endpoint_ms / 1000)
        target = Target(check_url(a.server), token=a.token, fingerprint=a.fingerprint,
                        server_pid=a.server_pid, endpoint_s=a.endpoint_ms / 1000)
        if not self._checked:
            preflight(target)
            self._checked = True
        return target

    def close(self, target: Target) -> None:
        if target.server is not None:
            target.server.stop()
