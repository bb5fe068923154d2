"""The pinned package list and a downloader for source distributions that never runs their code.

``pip download`` of an sdist asks the package's build backend for metadata, which executes the
package's ``setup.py``.  This module instead reads the index's simple API (PEP 691 JSON, or the PEP 503
HTML page) and fetches the archive with ``urllib``, checking its sha256 against the pinned list.  The
index URL is pip's own (``--index-url``, ``PIP_INDEX_URL`` or ``pip config``), never hard-coded here.
"""
from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .shards import DatasetError

# Licenses whose terms allow training on and redistributing the code (no copyleft).
PERMISSIVE = {"MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "PSF-2.0", "ISC", "Unlicense",
              "0BSD", "Zlib", "CC0-1.0", "LicenseRef-Public-Domain", "LicenseRef-Matplotlib"}
MAX_SDIST_BYTES = 200_000_000  # the largest sdist we accept; the biggest pinned one is ~45 MB
SDIST_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    license: str  # SPDX expression verified from the package's own metadata
    sha256: str = ""  # of the sdist; empty until first pinned

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_packages(path: str | Path) -> list[Package]:
    """Read a pinned list: ``[[package]]`` tables with name, version, license and sha256."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no package list at {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise DatasetError(f"{path} is not valid TOML ({e})") from None
    packages, seen = [], set()
    for i, entry in enumerate(raw.get("package", [])):
        try:
            pkg = Package(str(entry["name"]), str(entry["version"]), str(entry["license"]),
                          str(entry.get("sha256", "")).lower())
        except KeyError as e:
            raise DatasetError(f"{path}: package entry {i + 1} lacks {e.args[0]}") from None
        terms = set(re.split(r"\s+(?:AND|OR)\s+", pkg.license.strip("() ")))
        if not terms <= PERMISSIVE:
            raise DatasetError(f"{path}: {pkg.name} has license {pkg.license}, which is not on the permissive list")
        if pkg.sha256 and not _SHA256.match(pkg.sha256):
            raise DatasetError(f"{path}: {pkg.name} has a malformed sha256")
        if normalize(pkg.name) in seen:
            raise DatasetError(f"{path}: {pkg.name} is listed twice")
        seen.add(normalize(pkg.name))
        packages.append(pkg)
    if not packages:
        raise DatasetError(f"{path} lists no packages")
    return packages


def pip_index_url() -> str:
    """The index pip itself would use: PIP_INDEX_URL, then pip's configuration, then pip's default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] == "index-url" and key.split(".")[0] in ("global", "download", "install"):
            return value.strip().strip("'\"")
    try:  # pip's built-in default, read from pip so that no registry host is written here
        from pip._internal.models.index import PyPI
        return PyPI.simple_url
    except ImportError:
        raise DatasetError("no package index configured: pass --index-url or set PIP_INDEX_URL") from None


class _Links(html.parser.HTMLParser):
    """The anchors of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


def _open(url: str, accept: str | None = None, timeout: float = 120):
    if url.startswith("file:") and url.endswith("/"):
        url += "index.html"  # a file:// index is a folder tree of index.html pages
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(request, timeout=timeout)


def is_sdist_of(filename: str, pkg: Package) -> bool:
    for suffix in SDIST_SUFFIXES:
        if filename.endswith(suffix):
            project, _, version = filename[: -len(suffix)].rpartition("-")
            return normalize(project) == normalize(pkg.name) and version == pkg.version
    return False


def find_sdist(pkg: Package, index_url: str) -> tuple[str, str, str]:
    """(url, filename, sha256 the index states) of the package's sdist."""
    page = urllib.parse.urljoin(index_url.rstrip("/") + "/", normalize(pkg.name) + "/")
    try:
        with _open(page, "application/vnd.pypi.simple.v1+json, text/html;q=0.1") as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read(50_000_000)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot read the index page of {pkg.name} at {page} ({e})") from None
    files: list[tuple[str, str, str]] = []
    if "json" in kind:
        for f in json.loads(body).get("files", []):
            files.append((f["url"], f["filename"], f.get("hashes", {}).get("sha256", "")))
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        for href, text in parser.links:
            url, _, fragment = href.partition("#")
            filename = text or urllib.parse.unquote(url.rsplit("/", 1)[-1])
            files.append((url, filename, fragment[len("sha256="):] if fragment.startswith("sha256=") else ""))
    for url, filename, sha in files:
        if is_sdist_of(filename, pkg):
            return urllib.parse.urljoin(page, url), filename, sha.lower()
    raise DatasetError(f"the index has no source distribution of {pkg.spec}")


def _sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(pkg: Package, cache: str | Path, index_url: str | Callable[[], str] | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[Path, str]:
    """Path of the package's sdist in ``cache`` (downloaded once) and its sha256.

    A pinned sha256 must match, or the archive is refused.  ``index_url`` may be a function, called
    only when the index is needed; None means pip's.  ``progress(n_bytes)`` follows the download.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for suffix in SDIST_SUFFIXES:  # already downloaded: no index access at all
        for candidate in sorted(cache.glob(f"*{suffix}")):
            if is_sdist_of(candidate.name, pkg):
                sha = _sha256_of(candidate)
                if not pkg.sha256 or sha == pkg.sha256:
                    return candidate, sha
                candidate.unlink()  # a stale or corrupt copy: fetch it again below
    index = index_url() if callable(index_url) else index_url
    url, filename, index_sha = find_sdist(pkg, index or pip_index_url())
    if Path(filename).name != filename or filename.startswith("."):
        raise DatasetError(f"the index names the sdist of {pkg.spec} oddly: {filename!r}")
    expected = pkg.sha256 or index_sha
    part = cache / (filename + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with _open(url, timeout=300) as response, open(part, "wb") as out:
            while block := response.read(1 << 20):
                size += len(block)
                if size > MAX_SDIST_BYTES:
                    raise DatasetError(f"the sdist of {pkg.spec} is larger than {MAX_SDIST_BYTES:,} bytes")
                digest.update(block)
                out.write(block)
                if progress:
                    progress(len(block))
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {url} ({e})") from None
    except DatasetError:
        part.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    if expected and sha != expected:
        part.unlink(missing_ok=True)
        which = "the pinned list" if pkg.sha256 else "the index"
        raise DatasetError(f"the sdist of {pkg.spec} has sha256 {sha}, but {which} says {expected}; refusing it")
    target = cache / filename
    part.replace(target)
    return target, sha
