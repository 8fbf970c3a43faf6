"""ModelFetchDialog: download and prepare catalog models from the app, with progress.

Contract:
- `ModelFetchDialog(model_ids, parent=None, models_dir=None)` fetches each model in turn
  with `models.fetch.fetch_model` (into `models_dir`, default: where fetches write) once
  shown (or when `start()` is called). It shows each model's name and size, a bar of the
  bytes received ("12.3 of 56.4 MB"), then "Preparing…" (busy bar) while the files are
  extracted, checked and prepared.
- Cancel stops the download (the `.part` file stays, so Retry continues where it stopped)
  and says how much is kept. A failure shows the fetch's own sentence (offline, checksum,
  HTTP, ...) with Retry and Close. When every model is ready the dialog accepts itself;
  Close, Esc or the window's close button reject it (a running fetch is cancelled first,
  and the dialog closes once its worker has stopped).
- State for callers and tests: `state` is "idle", "downloading", "preparing", "cancelling",
  "cancelled", "failed" or "done"; `offline` tells whether the last failure was a
  network one.

Thread rules: GUI thread only. The fetch runs on a daemon worker thread (never on the GUI
thread); it reports through FetchWorker's signals, which Qt delivers queued to this
dialog on the GUI thread. Cancel sets a threading.Event the worker's download watches.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from models.catalog import ModelSpec, load_catalog
from models.download import DownloadCancelled, host_of, package_index
from models.fetch import FetchError, fetch_model

Fetcher = Callable[..., Path]


def short_name(spec: ModelSpec) -> str:
    """The first words of a catalog description: "Moonshine tiny, English, int8"."""
    return re.split(r" \(|\. ", spec.description, maxsplit=1)[0].rstrip(".")


def describe(model_ids: Sequence[str]) -> str:
    """"Moonshine tiny, English, int8 (44 MB) and Silero VAD v6 (2 MB)"."""
    catalog = load_catalog()
    parts = [f"{short_name(catalog.get(m))} ({catalog.get(m).size / 1e6:.0f} MB)"
             for m in model_ids]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class FetchWorker(QObject):
    """Fetches models on a daemon thread; its signals are emitted from that thread."""

    bytes_received = Signal(object, object)  # done, total (None: unknown)
    stage = Signal(int, str)  # index of the model in the list, "download"|"extract"|"prepare"
    done = Signal()
    failed = Signal(str, bool)  # the sentence to show, whether it is a network failure
    cancelled = Signal()

    def __init__(self, model_ids: Sequence[str], models_dir: Path | None,
                 fetch: Fetcher = fetch_model) -> None:
        super().__init__()
        self.model_ids = list(model_ids)
        self.models_dir = models_dir
        self.fetch = fetch
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, name="model-fetch", daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self, timeout_s: float = 2.0) -> None:
        """After its last signal, until the thread has really ended (it only returns)."""
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _run(self) -> None:
        try:
            for i, model_id in enumerate(self.model_ids):
                self.fetch(model_id, models_dir=self.models_dir, progress=lambda _msg: None,
                           on_bytes=self.bytes_received.emit, cancel=self.cancel,
                           on_stage=lambda name, i=i: self.stage.emit(i, name))
        except DownloadCancelled:
            self.cancelled.emit()
        except FetchError as exc:
            self.failed.emit(str(exc), exc.offline)
        except Exception as exc:  # disk full, permissions, ...: say it, never crash the app
            self.failed.emit(f"{type(exc).__name__}: {exc}", False)
        else:
            self.done.emit()


class ModelFetchDialog(QDialog):
    def __init__(self, model_ids: Sequence[str], parent: QWidget | None = None,
                 models_dir: Path | None = None, fetch: Fetcher = fetch_model) -> None:
        super().__init__(parent)
        self.setWindowTitle("Downloading the speech model")
        self.setModal(True)
        self.setMinimumWidth(460)
        self.model_ids = list(model_ids)
        self.state = "idle"
        self.offline = False
        self._current = 0
        self._received: tuple[int, int | None] = (0, None)
        self._close_when_stopped = False
        self._started = False
        self.worker = FetchWorker(self.model_ids, models_dir, fetch)
        self.worker.bytes_received.connect(self._on_bytes)
        self.worker.stage.connect(self._on_stage)
        self.worker.done.connect(self._on_done)
        self.worker.failed.connect(self._on_failed)
        self.worker.cancelled.connect(self._on_cancelled)

        self.heading = QLabel(f"Downloading {describe(self.model_ids)} from "
                              f"{host_of(package_index())}.")
        self.heading.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.PlainText)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons = QDialogButtonBox()
        self.retry_button = QPushButton("Retry")
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close")
        for button, role in ((self.retry_button, QDialogButtonBox.ButtonRole.ActionRole),
                             (self.cancel_button, QDialogButtonBox.ButtonRole.RejectRole),
                             (self.close_button, QDialogButtonBox.ButtonRole.RejectRole)):
            button.setAutoDefault(False)
            self.buttons.addButton(button, role)
        self.retry_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)
        layout.addWidget(self.buttons)
        self._show_buttons(cancel=True)

    # ---- actions ---------------------------------------------------------------------------
    @Slot()
    def start(self) -> None:
        """Start (or retry: resume) fetching; nothing happens while a fetch runs."""
        self._started = True
        if self.worker.running():
            return
        self.state = "downloading"
        self.offline = False
        self._current = 0
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.detail.setText(f"Connecting to {host_of(package_index())}…")
        self._show_buttons(cancel=True)
        self.worker.start()

    @Slot()
    def cancel(self) -> None:
        """Stop the running fetch (GUI thread); the partial download is kept."""
        if not self.worker.running():
            return
        self.state = "cancelling"
        self.worker.cancel.set()
        self.cancel_button.setEnabled(False)
        self.detail.setText("Cancelling…")

    def reject(self) -> None:
        """Close: a running fetch is cancelled first; the dialog closes once it stopped."""
        if self.worker.running():
            self._close_when_stopped = True
            self.cancel()
            return
        super().reject()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._started:
            QTimer.singleShot(0, self.start)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.worker.running():
            event.ignore()
            self.reject()
            return
        super().closeEvent(event)

    # ---- worker reports (queued onto the GUI thread) -------------------------------------
    def _model_label(self) -> str:
        spec = load_catalog().get(self.model_ids[self._current])
        count = (f" ({self._current + 1} of {len(self.model_ids)})"
                 if len(self.model_ids) > 1 else "")
        return f"{short_name(spec)}{count}"

    @Slot(object, object)
    def _on_bytes(self, done: int, total: int | None) -> None:
        if self.state == "cancelling":
            return
        self._received = (done, total)
        if self.bar.maximum() == 0:
            self.bar.setRange(0, 1000)
        if total:
            self.bar.setValue(min(1000, done * 1000 // total))
            amount = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB"
        else:
            amount = f"{done / 1e6:.1f} MB"
        self.detail.setText(f"Downloading {self._model_label()}: {amount}")

    @Slot(int, str)
    def _on_stage(self, index: int, stage: str) -> None:
        self._current = index
        if self.state == "cancelling":
            return
        if stage == "download":
            self.state = "downloading"
            self._received = (0, None)
            self.bar.setRange(0, 1000)
            self.bar.setValue(0)
            self.detail.setText(f"Downloading {self._model_label()}…")
        else:  # extract, check and prepare: no byte count, a busy bar
            self.state = "preparing"
            self.bar.setRange(0, 0)
            self.detail.setText(f"Preparing {self._model_label()}…")
            self.cancel_button.setEnabled(stage == "prepare")

    @Slot()
    def _on_done(self) -> None:
        self.state = "done"
        self.bar.setRange(0, 1000)
        self.bar.setValue(1000)
        self.detail.setText("Ready.")
        self._show_buttons()
        if self._close_when_stopped:
            self.worker.wait()  # "closes once it stopped": the thread is past its last emit
            super().reject()
        else:
            self.accept()

    @Slot(str, bool)
    def _on_failed(self, message: str, offline: bool) -> None:
        self.state = "failed"
        self.offline = offline
        self.bar.setRange(0, 1000)
        self.detail.setText(f"The download failed. {message}")
        self._show_buttons(retry=True)
        if self._close_when_stopped:
            self.worker.wait()  # "closes once it stopped": the thread is past its last emit
            super().reject()

    @Slot()
    def _on_cancelled(self) -> None:
        self.state = "cancelled"
        self.bar.setRange(0, 1000)
        done, total = self._received
        kept = (f" {done / 1e6:.1f} of {total / 1e6:.1f} MB are kept;"
                if done and total else "")
        self.detail.setText(f"Download paused.{kept} Retry continues where it stopped.")
        self._show_buttons(retry=True)
        if self._close_when_stopped:
            self.worker.wait()  # "closes once it stopped": the thread is past its last emit
            super().reject()

    def _show_buttons(self, cancel: bool = False, retry: bool = False) -> None:
        self.cancel_button.setVisible(cancel)
        self.cancel_button.setEnabled(cancel)
        self.retry_button.setVisible(retry)
        self.close_button.setVisible(not cancel)
