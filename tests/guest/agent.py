"""The QEMU guest agent (qemu-ga) for the test guest: Debian's binary and the libraries it loads.

Why this way: qemu-ga is dynamically linked against glib, libudev, liburing, libnuma and libc, and
Debian ships no static build. The binary comes from ``apt-get download qemu-guest-agent`` (its
version is resolved with the kernel's and busybox's, so a new package gives a new guest), and its
libraries from this machine: ``ldd`` on the extracted binary names them, and QEMU itself needs the
same glib, libudev, liburing and libnuma, so a host that runs the tests has them. Nothing is
installed on the host.

The bundle is cached beside the .debs as ``qga/<version>/``: the binary, ``bundle.json`` (each library's
path as ldd names it, its size, mtime and SHA-256). A call checks the libraries with a ``stat`` each;
a changed one rebuilds the bundle, and its new digest (:attr:`Bundle.digest`, part of the guest's cache
key) gives a new guest. In the initramfs every file keeps its host path (``/lib64/ld-linux-x86-64.so.2``,
``/lib/x86_64-linux-gnu/...``) and the binary is ``/usr/sbin/qemu-ga``; /init starts it only when the
domain has the ``org.qemu.guest_agent.0`` channel.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "qemu-guest-agent"
BINARY = "usr/sbin/qemu-ga"

_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


@dataclass(frozen=True)
class Bundle:
    """qemu-ga and its libraries: ``files`` maps a path in the guest to the file to copy there."""

    files: dict[str, Path]
    digest: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fresh(directory: Path) -> Bundle | None:
    """The cached bundle, if every library it copied is unchanged on the host (a stat each)."""
    try:
        data = json.loads((directory / "bundle.json").read_text())
        files = {BINARY: directory / "qemu-ga"}
        for lib in data["libs"]:
            st = os.stat(lib["path"])
            if [st.st_size, st.st_mtime_ns] != [lib["size"], lib["mtime_ns"]]:
                return None
            files[lib["path"].lstrip("/")] = Path(lib["path"])
        return Bundle(files=files, digest=str(data["digest"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def bundle(root: Path, version: str, download: Callable[[], Path],
           run: Callable[..., str]) -> Bundle:
    """The qemu-ga bundle of ``version``, made in ``root/qga/`` if missing or stale (caller holds the
    build lock when it may have to make it). ``download`` returns the .deb; ``run`` is the builder's
    command runner (raises GuestBuildError on failure)."""
    directory = root / "qga" / re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    found = _fresh(directory)
    if found is not None:
        return found
    deb = download()
    (root / "tmp").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qga-", dir=root / "tmp") as tmp:
        tree = Path(tmp) / "tree"
        run(["dpkg-deb", "-x", str(deb), str(tree)], what=f"extracting {deb.name}")
        binary = tree / BINARY
        out = run(["ldd", str(binary)], what="listing qemu-ga's libraries")
        missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
        if missing:
            raise RuntimeError(f"this host lacks qemu-ga's libraries {', '.join(missing)} (scripts/setup "
                               "installs them)")
        libs = []
        for line in out.splitlines():
            m = _LDD_LINE.match(line)
            if m:
                path = m.group(1)
                st = os.stat(path)
                libs.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "sha256": _sha256(Path(path))})
        if not any(lib["path"].endswith("/libglib-2.0.so.0") for lib in libs):
            raise RuntimeError(f"ldd did not name qemu-ga's libraries (is glib installed?):\n{out}")
        digest = hashlib.sha256(json.dumps(
            {"version": version, "binary": _sha256(binary), "libs": libs}, sort_keys=True).encode()
        ).hexdigest()[:16]
        staged = Path(tmp) / "bundle"
        staged.mkdir()
        shutil.copy2(binary, staged / "qemu-ga")
        (staged / "bundle.json").write_text(json.dumps({"digest": digest, "libs": libs}, indent=1))
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(staged, directory)
    made = _fresh(directory)
    if made is None:
        raise RuntimeError(f"the qemu-ga bundle in {directory} changed while it was made")
    return made
