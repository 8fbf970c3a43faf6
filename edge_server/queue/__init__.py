"""Decode work through Redis Streams: one gateway, inference workers on any machine.

`earshot-server --queue redis://HOST:PORT/DB` replaces the in-process `WorkerPool` with
`RedisPool` (pool.py, same interface for the scheduler); `earshot-worker --queue ...`
(worker_cli.py) decodes on any machine that reaches Redis. Stream layout and the wire
format of a task and a result: streams.py. Nothing here is imported without `--queue`
(the embedded default needs no Redis, nor the redis package at startup).
"""
