"""ONNX Runtime sessions: which flavour is installed, which provider really runs.

onnxruntime and onnxruntime-gpu overwrite each other's files, and onnxruntime-gpu lists
CUDAExecutionProvider even with no CUDA libraries, so the provider is read back from the
created session, never from `get_available_providers()`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge_server.engine.base import EngineError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_FLAVOURS = ("onnxruntime", "onnxruntime-gpu")


def installed_flavours() -> list[str]:
    """Which onnxruntime distributions are installed in this environment."""
    found = []
    for name in _FLAVOURS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def import_onnxruntime():
    """Import onnxruntime after checking that exactly one flavour is installed."""
    flavours = installed_flavours()
    if len(flavours) > 1:
        raise EngineError(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other. "
            "Fix: pip uninstall -y onnxruntime onnxruntime-gpu, then install one "
            "(pip install 'earshot[cpu]' or 'earshot[gpu]')."
        )
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError(
            "onnxruntime is not installed: pip install 'earshot[cpu]' (or 'earshot[gpu]')"
        ) from exc
    return onnxruntime


def default_threads() -> int:
    """Intra-op threads when none are given: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@functools.cache
def preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries of NVIDIA's pip packages (`nvidia-*-cu13`, what
    `pip install 'onnxruntime-gpu[cuda,cudnn]'` brings), so the CUDA provider finds them
    without LD_LIBRARY_PATH. Once per process (a second concurrent call is harmless); a
    no-op for CPU builds (no CUDA version) and where the libraries come from the system.
    onnxruntime prints what it could not load; that goes to stderr, never into stdout,
    which `earshot transcribe` keeps for the transcript."""
    if not hasattr(ort, "preload_dlls"):
        return
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ort.preload_dlls()
    except Exception as exc:  # a missing or partial CUDA install: session creation says so
        log.debug("onnxruntime.preload_dlls: %s", exc)


@dataclass
class SessionFactory:
    """Creates sessions on one device with one thread setting.

    device: 'auto' (CUDA if a session really gets it, else CPU), 'cpu', or 'cuda'
    (an error if CUDA is not really available). threads: intra-op threads per session.
    """

    device: str = "auto"
    threads: int | None = None
    cuda_device_id: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise EngineError(f"unknown device '{self.device}' (use one of {', '.join(DEVICES)})")
        self._ort = import_onnxruntime()

    @property
    def ort(self):
        """The onnxruntime module."""
        return self._ort

    def cuda_listed(self) -> bool:
        """Whether this onnxruntime build lists the CUDA provider (not proof that it works)."""
        return "CUDAExecutionProvider" in self._ort.get_available_providers()

    def create(self, path: Path, profile_prefix: str | None = None):
        """An InferenceSession for `path` on the configured device.

        ONNX Runtime logs at WARNING and above (its "nodes were not assigned to the
        preferred execution providers" warning stays visible on stderr). `profile_prefix`:
        profile the session's runs into `<prefix>_*.json` until `end_profiling()` (the
        engine does this for one warm-up to learn where nodes really run, see placement.py).
        """
        ort = self._ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or default_threads()
        opts.inter_op_num_threads = 1
        # idle pool threads sleep instead of spin-waiting: a single-row decode (a partial)
        # otherwise burns a second core for nothing (bench/partial_cost.py: 0.52 -> 0.26)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 2
        opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        providers: list = ["CPUExecutionProvider"]
        if self.device in ("auto", "cuda") and self.cuda_listed():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.cuda_device_id}))
            preload_cuda_libraries(ort)
        try:
            session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"{path.name}: onnxruntime could not load it: {exc}") from exc
        actual = session.get_providers()[0]
        if self.device == "cuda" and actual != "CUDAExecutionProvider":
            raise EngineError(
                "device 'cuda' requested but CUDA is not usable here (session runs on "
                f"{actual}); install earshot[gpu] with a working CUDA 13 runtime and "
                "cuDNN 9 (onnxruntime-gpu 1.28 is built for them: pip install "
                "'onnxruntime-gpu[cuda,cudnn]' brings both), or use --device cpu"
            )
        log.debug("session %s on %s", path.name, actual)
        return session
