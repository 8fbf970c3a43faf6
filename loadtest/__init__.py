"""`earshot loadtest`: drive an edge server with many real-time clients of real speech and
check every expected segment (docs/benchmarks.md, "Load test a box").

Modules, one job each: `speech` (reference streams and their expected segments), `pacing`
(real-time frame schedule), `client` (one stream through the real protocol), `accounting`
(each expected segment received exactly once, in order, within a WER bound), `stats`
(percentiles, median and spread), `server_probe` (server CPU and memory), `local_server`
(an `earshot-server` started for the run), `modes/` (sweep, herd, slowloris, chaos,
failover), `report` (JSON and text), `plot` (PNG) and `cli` (the command).
"""
