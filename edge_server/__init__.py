"""Earshot edge server: engine, segmentation, streaming sessions, scheduling, transport.

Importable without Qt and without PortAudio: a headless GPU box installs only this.
"""
