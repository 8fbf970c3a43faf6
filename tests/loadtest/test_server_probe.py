"""loadtest.server_probe: CPU and peak memory of a process tree; n/a for no server."""

import subprocess
import sys
import time

from loadtest.server_probe import LocalProbe, RemoteProbe


def test_local_probe_counts_a_busy_child_process():
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               "'-c', 'import time\\nt=time.time()\\nwhile time.time()-t<3: pass'"
                               "]); time.sleep(3)"])
    try:
        time.sleep(0.3)
        probe = LocalProbe(parent.pid, every_s=0.2)
        probe.start()
        time.sleep(1.5)
        probe.stop()
    finally:
        parent.kill()
    result = probe.result()
    assert result["server_cpu_cores"] > 0.3  # the child spins one core
    assert result["server_peak_rss_mb"] > 5


def test_remote_probe_of_nothing_says_na():
    probe = RemoteProbe("http://127.0.0.1:9", every_s=0.1)
    probe.start()
    probe.stop()
    assert probe.result() == {"server_cpu_cores": None, "server_peak_rss_mb": None,
                              "server_probe": "n/a"}
