"""models.download against a real local package index (aiohttp on 127.0.0.1) serving a
real wheel of Silero VAD: index lookup, resume, restart, checksum, HTTP and network errors,
cancellation."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest

from models.catalog import load_catalog
from models.download import (
    DownloadCancelled,
    DownloadError,
    download,
    download_wheel,
    find_wheel,
    package_index,
    pick_wheel,
)
from tests.package_index import PackageIndex, build_wheel

SILERO = load_catalog().get("silero-vad")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """silero_vad-6.2.3-py3-none-any.whl holding the real silero_vad.onnx (2.3 MB)."""
    return build_wheel(tmp_path_factory.mktemp("wheels"), SILERO)


@pytest.fixture
def index(wheel):
    with PackageIndex() as idx:
        idx.add(wheel)
        yield idx


def file_requests(index: PackageIndex) -> list[str | None]:
    """The Range header of each file request the index saw."""
    return [rng for path, rng in index.requests if path.startswith("/files/")]


def test_index_comes_from_earshot_then_pip_then_pypi(monkeypatch):
    monkeypatch.delenv("EARSHOT_PACKAGE_INDEX", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert package_index() == "https://pypi.org/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/pypi/simple/")
    assert package_index() == "https://mirror.example/pypi/simple"
    monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", "http://box:3141/root/pypi/")
    assert package_index() == "http://box:3141/root/pypi"


def test_find_wheel_picks_the_pinned_version_and_platform(index, wheel, tmp_path):
    other = tmp_path / "silero_vad-6.2.2-py3-none-any.whl"
    other.write_bytes(b"older")
    index.add(other)
    link = find_wheel("silero-vad==6.2.3", index=index.url)
    assert link.filename == wheel.name
    assert link.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert link.size == wheel.stat().st_size
    assert link.url.startswith(index.url.removesuffix("/simple") + "/files/")
    with pytest.raises(DownloadError, match=r"has no manylinux_2_34_x86_64 wheel of "
                       r"silero-vad==6.2.3 \(it has: silero_vad-6.2.3-py3-none-any.whl\)"):
        find_wheel("silero-vad==6.2.3", "manylinux_2_34_x86_64", index=index.url)


def test_platform_tags_in_compound_wheel_names_match():
    from models.download import WheelLink

    files = [WheelLink("m-1.0-py3-none-macosx_15_0_arm64.whl", "u1", "a"),
             WheelLink("m-1.0-py3-none-manylinux_2_31_x86_64.manylinux_2_34_x86_64.whl",
                       "u2", "b")]
    assert pick_wheel(files, "M==1.0", "manylinux_2_34_x86_64", "idx").url == "u2"
    with pytest.raises(ValueError, match="not a pinned requirement"):
        pick_wheel(files, "m>=1", None, "idx")


def test_html_only_index_is_read_too(wheel):
    with PackageIndex(html=True) as idx:
        idx.add(wheel)
        link = find_wheel("silero-vad==6.2.3", index=idx.url)
    assert link.filename == wheel.name and link.size is None
    assert link.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_unknown_project_is_a_clear_index_error(index):
    with pytest.raises(DownloadError, match=r"has no project moonshine-voice \(HTTP 404\)"
                       ) as info:
        find_wheel("moonshine-voice==0.1.0", "manylinux_2_34_x86_64", index=index.url)
    assert info.value.kind == "index"


def test_download_reports_progress_and_checks_the_hash(index, wheel, tmp_path):
    seen = []
    path = download_wheel("silero-vad==6.2.3", tmp_path, on_bytes=lambda d, t: seen.append(
        (d, t)), index=index.url)
    size = wheel.stat().st_size
    assert path == tmp_path / wheel.name and path.read_bytes() == wheel.read_bytes()
    assert not list(tmp_path.glob("*.part"))
    assert seen[-1] == (size, size) and len(seen) > 10
    assert all(t == size for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    index.requests.clear()  # a whole, checked wheel there already: nothing is downloaded
    assert download_wheel("silero-vad==6.2.3", tmp_path, index=index.url) == path
    assert file_requests(index) == []


def test_interrupted_download_resumes_where_it_stopped(index, wheel, tmp_path):
    link = find_wheel("silero-vad==6.2.3", index=index.url)
    index.cut_after = 1_000_000
    with pytest.raises(DownloadError, match=r"was interrupted .* trying again continues "
                       r"from there") as info:
        download(link, tmp_path, retries=0)
    assert info.value.kind == "interrupted"
    part = tmp_path / f"{wheel.name}.part"
    assert part.stat().st_size == 1_000_000
    assert part.read_bytes() == wheel.read_bytes()[:1_000_000]
    seen = []
    path = download(link, tmp_path, on_bytes=lambda d, t: seen.append(d), retries=0)
    assert path.read_bytes() == wheel.read_bytes()
    assert file_requests(index) == [None, "bytes=1000000-"]
    assert seen[0] > 1_000_000  # counted from where it resumed
    assert not part.exists()


def test_a_cut_connection_is_retried_from_its_offset_within_one_call(index, wheel, tmp_path):
    index.cut_after = 700_000
    path = download_wheel("silero-vad==6.2.3", tmp_path, index=index.url)
    assert path.read_bytes() == wheel.read_bytes()
    assert file_requests(index) == [None, "bytes=700000-"]


def test_server_ignoring_range_restarts_the_file_cleanly(index, wheel, tmp_path):
    link = find_wheel("silero-vad==6.2.3", index=index.url)
    index.cut_after = 500_000
    with pytest.raises(DownloadError):
        download(link, tmp_path, retries=0)
    index.ignore_range = True
    seen = []
    path = download(link, tmp_path, on_bytes=lambda d, t: seen.append(d), retries=0)
    assert path.read_bytes() == wheel.read_bytes()  # not 500 kB of it twice
    assert file_requests(index) == [None, "bytes=500000-"]
    assert seen[0] <= 1 << 16  # counted from the start again


def test_checksum_mismatch_deletes_the_download(wheel, tmp_path):
    with PackageIndex() as idx:
        idx.add(wheel, sha256="ab" * 32)
        with pytest.raises(DownloadError, match=r"does not match the package index's "
                           r"checksum .*; it was deleted") as info:
            download_wheel("silero-vad==6.2.3", tmp_path, index=idx.url)
    assert info.value.kind == "checksum"
    assert list(tmp_path.iterdir()) == []


def test_http_error_status_is_named(index, wheel, tmp_path):
    link = find_wheel("silero-vad==6.2.3", index=index.url)
    del index.files[wheel.name]
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1:\d+ answered HTTP 404 Not Found "
                       r"for http://") as info:
        download(link, tmp_path)
    assert info.value.kind == "http" and not info.value.offline


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_index_says_offline():
    port = closed_port()
    with pytest.raises(DownloadError, match=rf"^Could not reach 127\.0\.0\.1:{port} \(no "
                       r"internet connection\?\)\.$") as info:
        find_wheel("silero-vad==6.2.3", index=f"http://127.0.0.1:{port}/simple")
    assert info.value.offline


def test_unknown_host_says_so():
    with pytest.raises(DownloadError, match=r"Could not look up earshot-index\.invalid") as info:
        find_wheel("silero-vad==6.2.3", index="https://earshot-index.invalid/simple")
    assert info.value.kind == "dns" and info.value.offline


def test_untrusted_certificate_is_a_tls_error_and_pip_cert_trusts_it(wheel, tmp_path,
                                                                       monkeypatch):
    import ssl

    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    monkeypatch.delenv("PIP_CERT", raising=False)
    with PackageIndex(ssl_context=server) as idx:
        idx.add(wheel)
        with pytest.raises(DownloadError, match=r"^The secure \(TLS\) connection to "
                           r"127\.0\.0\.1:\d+ failed \(.*certificate.*\); a proxy that "
                           r"intercepts HTTPS or a wrong system clock can cause this\.$"
                           ) as info:
            find_wheel("silero-vad==6.2.3", index=idx.url)
        assert info.value.kind == "tls" and not info.value.offline
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("PIP_CERT", str(tmp_path / "ca.pem"))
        path = download_wheel("silero-vad==6.2.3", tmp_path / "dl", index=idx.url)
    assert path.read_bytes() == wheel.read_bytes()


def test_non_http_index_is_refused():
    with pytest.raises(DownloadError, match=r"is not an http\(s\) URL; set "
                       r"EARSHOT_PACKAGE_INDEX"):
        find_wheel("silero-vad==6.2.3", index="file:///opt/pypi/simple")


def test_cancel_while_the_server_stalls_keeps_the_part_for_a_resume(index, wheel, tmp_path):
    link = find_wheel("silero-vad==6.2.3", index=index.url)
    cancel = threading.Event()
    index.stall_after = 300_000  # the server stops sending mid-file ...
    index.hold.clear()
    timers = []

    def on_bytes(done, _total):
        if done >= 300_000 and not timers:  # ... and then the user presses Cancel
            timers.append(threading.Timer(0.2, cancel.set))
            timers[0].start()

    started = time.monotonic()
    with pytest.raises(DownloadCancelled):
        download(link, tmp_path, on_bytes=on_bytes, cancel=cancel)
    assert time.monotonic() - started < 5  # not the 30 s read timeout
    part = tmp_path / f"{wheel.name}.part"
    kept = part.stat().st_size
    assert kept == 300_000
    with pytest.raises(DownloadCancelled):  # still set: nothing starts
        download(link, tmp_path, cancel=cancel)
    index.hold.set()
    path = download(link, tmp_path, cancel=threading.Event())
    assert path.read_bytes() == wheel.read_bytes()
    assert file_requests(index)[-1] == f"bytes={kept}-"
