"""A plain zeroconf browser pinned to 127.0.0.1, recording what comes and goes."""

from __future__ import annotations

import threading

from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf


class MdnsWatch:
    """Browse `service_type` on loopback; `added`/`removed` events, `names` seen in order."""

    def __init__(self, service_type: str) -> None:
        self.service_type = service_type
        self.zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        self.added, self.removed = threading.Event(), threading.Event()
        self.names: list[str] = []
        self.browser: ServiceBrowser | None = None

    def start(self) -> None:
        self.browser = ServiceBrowser(self.zc, self.service_type, handlers=[self._on_change])

    def _on_change(self, zeroconf, service_type, name, state_change) -> None:
        if state_change is ServiceStateChange.Added:
            self.names.append(name)
            self.added.set()
        elif state_change is ServiceStateChange.Removed:
            self.removed.set()

    def info(self, name: str):
        return self.zc.get_service_info(self.service_type, name, timeout=2000)

    def close(self) -> None:
        if self.browser is not None:
            self.browser.cancel()
        self.zc.close()
