"""Build the tiny Linux test guest (kernel + initramfs) that avirt's guest tests boot under TCG.

Why a home-made guest: tests need a real guest that boots in about 2 s under TCG, answers the ACPI
power button (``system_powerdown``) and writes known patterns to a virtio disk, so block jobs can be
checked against what the guest reported. A Debian cloud kernel plus busybox in a ~1 MiB initramfs
does that with nothing but Debian's package mirror: ``apt-get download`` two .debs, ``dpkg-deb -x``
them into a scratch directory (nothing is installed, /boot is untouched), copy out the kernel, a
few modules and busybox, and write a gzip'd newc cpio in pure Python (fixed inode numbers and mtimes,
so the same inputs give a byte-identical initrd).

Cache (default ``~/.cache/avirt-test-guest``, env ``AVIRT_GUEST_CACHE``, or the ``cache_root``
argument)::

    .lock                     flock held while downloading or building
    debs/NAME_VERSION_ARCH.deb  downloaded packages (other versions of the same package are pruned)
    qga/<version>/            the guest agent: qemu-ga from its .deb and bundle.json (see agent.py)
    guests/<key>/             vmlinuz, initrd.img, manifest.json; appears by an atomic rename
    resolved-<meta>.json      last version resolution, valid while the apt lists are unchanged
    tmp/                      scratch space (same filesystem, so the final rename is atomic)

The key is ``<kernel release>-<16 hex>``; the hex part hashes the kernel package and version, the
busybox-static version, the /init script (``init.sh`` beside this file), the module list, the
qemu-guest-agent version with the digest of its bundle (the binary and the host libraries it loads:
``agent.py``) and ``LAYOUT_VERSION``. A new kernel in the apt lists or an edited /init gives a new key
and a rebuild; otherwise a call is a few stat() calls. Resolving versions costs ~0.6 s per ``apt-cache``
run on a machine with apt's binary cache disabled (Docker-style images), hence ``resolved-<meta>.json``.

Concurrency: two processes (e.g. pytest-xdist workers or two pytest runs) may call
:func:`build_guest` at once; the build runs under an exclusive ``flock`` and the finished directory
appears by ``rename``, so a reader either sees a complete guest or none.

Serial markers printed by the guest's /init (console=ttyS0; the tty sends ``\\r\\n``):

- ``avirt-guest: firmware efi`` (or ``bios``): which firmware started the kernel.
- ``avirt-guest: ready uptime=S``: modules loaded, power button armed, workload about to start.
- ``avirt-wl: i=N slot=K pat=0xPP``: 64 KiB of byte PP is at K MiB of /dev/vda (after fsync).
- ``avirt-wl: done`` (finite ``avirt.count``) or ``avirt-wl: stopped i=N`` (power button).
- ``avirt-wl: error ...``, ``avirt-guest: error ...``: something in the guest failed.
- ``avirt-guest: power button`` then ``avirt-guest: poweroff``: shutting down.
- ``avirt-guest: block NAME sectors=N ro=R md5=M path=P`` (or ``block NAME missing``) for each name
  in ``avirt.blocks``, then ``avirt-guest: blocks done: `` and every entry of /sys/block.
- ``avirt-guest: share TAG read=TEXT wrote=ok`` (or ``share TAG error ...``) for each virtiofs tag in
  ``avirt.shares``: mounted at /mnt/TAG, the first line of its host.txt read, its guest.txt written.
- ``avirt-guest: net ethN mac=M ip=A/P`` (or ``net ethN error no lease``) for each NIC that got (or did
  not get) a DHCP lease with ``avirt.net=dhcp``, then ``avirt-guest: net done``.
- ``avirt-guest: net ethN ...`` again for each NIC plugged in later, with ``avirt.hotnet=1``, and
  ``avirt-guest: net ethN gone`` for each one that goes away.
- ``avirt-guest: nc connected uptime=T0``, ``nc received N bytes uptime=T1`` (``avirt.nc=listen:PORT``)
  and ``nc sent N`` (``avirt.nc=send:IP:PORT:BYTES[:COUNT]``): TCP transfers between two guests.
- ``avirt-guest: lookup NAME ADDRESS`` (or ``lookup NAME failed``) for each ``avirt.lookup`` name.
- ``avirt-guest: ping IP ok`` / ``ping IP fail``: each change of an ``avirt.ping`` address's answer.
- ``avirt-guest: qga port /dev/vportNpM`` when the domain has the guest agent's channel (qemu-ga runs on
  it), ``qga stopped`` / ``qga restart`` around a restart of the agent, ``agent shutdown -P|-H|-r`` when
  the agent's guest-shutdown runs /sbin/shutdown.

Kernel command line knobs: ``avirt.workload=none|write`` (default none), ``avirt.slots=N`` (default
4), ``avirt.count=N`` (0 = forever, the default), ``avirt.sleep=S`` (seconds between writes,
fractions allowed, default 0), ``avirt.actions=rtc,suspend,panic`` (see ``init.sh``),
``avirt.wait=S`` (seconds the write workload waits for a /dev/vda plugged in after boot, default 0),
``avirt.blocks=sda,sr0`` (block devices to wait for and report: size, read-only flag, the MD5 of
their whole content, their sysfs path), ``avirt.shares=TAG,...`` (virtiofs tags to mount and use),
``avirt.net=dhcp`` (every ethN asks for a lease), ``avirt.hostname=NAME`` (the host name it sends),
``avirt.lookup=NAME@SERVER,...`` (names asked of a DNS server after the leases), ``avirt.ping=IP,...``
(addresses pinged once a second after the leases and lookups, changes reported), ``avirt.hotnet=1``
(NICs plugged in after boot get leases too), ``avirt.nc=listen:PORT`` or ``send:IP:PORT:BYTES[:COUNT]``.

Run ``python -m tests.guest.build`` from the repository root to build and print the paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import agent as qga_agent

__all__ = ["GUEST_MODULES", "GuestBuildError", "GuestImages", "build_guest", "default_cache_root"]

log = logging.getLogger(__name__)

#: Bump when the initramfs layout or the build steps change in a way the inputs don't show.
LAYOUT_VERSION = 3

DEFAULT_KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

#: Modules /init loads, in this order (dependencies of each are added before it if missing).
GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "button",
    "evdev",
    "virtio_balloon",  # BALLOON_CHANGE: only a guest driver answers the host's balloon target
    "pvpanic",  # GUEST_PANICKED: the guest reports its panic through <panic model='isa'/>
    "pvpanic_mmio",
    "virtio_scsi",  # disks and cdroms on <controller type='scsi' model='virtio-scsi'/>
    "sd_mod",  # SCSI and ATA disks: /dev/sdX
    "sr_mod",  # SCSI and ATA cdroms: /dev/srN
    "virtiofs",  # host directories shared through <filesystem><driver type='virtiofs'/>
    "virtio_net",  # NICs on host networks (<interface type='network'|'bridge'|'ethernet'>)
    "virtio_console",  # virtio-serial ports: the guest agent's org.qemu.guest_agent.0 channel
)

#: Modules loaded after :data:`GUEST_MODULES` when the kernel has them: the cloud kernel builds no AHCI
#: driver (q35's SATA controller), the generic one (``kernel_meta="linux-image-amd64"``) does.
OPTIONAL_MODULES: tuple[str, ...] = ("ahci", "e1000e")

INIT_SCRIPT = Path(__file__).with_name("init.sh")

# Where apt keeps its state; its files' stat() results tell whether a memoized resolution is stale.
_APT_STATE_PATHS = (Path("/var/lib/apt/lists"), Path("/etc/apt"))

_APT_TIMEOUT_S = 900.0
_APT_ENV = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


class GuestBuildError(RuntimeError):
    """The test guest could not be resolved, downloaded or built (the message says which step)."""


class _AptError(GuestBuildError):
    """An apt step failed in a way that `apt-get update` may fix (empty or stale package lists)."""


@dataclass(frozen=True)
class GuestImages:
    """A built test guest: pass ``kernel`` to ``-kernel`` and ``initrd`` to ``-initrd``."""

    kernel: Path
    initrd: Path
    key: str


@dataclass(frozen=True)
class _Resolved:
    kernel_package: str
    kernel_version: str
    busybox_version: str
    qga_version: str


def default_cache_root() -> Path:
    """``$AVIRT_GUEST_CACHE`` if set, else ``~/.cache/avirt-test-guest``."""
    env = os.environ.get("AVIRT_GUEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "avirt-test-guest"


def build_guest(cache_root: Path | None = None, *, kernel_meta: str | None = None) -> GuestImages:
    """Return the test guest's kernel and initrd, building them first if the cache lacks them.

    The kernel package is ``kernel_meta``, else ``$KERNEL_META``, else ``linux-image-cloud-amd64``
    (its LZ4 kernel boots in ~2 s under TCG, the generic XZ one, ``linux-image-amd64``, takes twice
    as long but has drivers the cloud one lacks, such as AHCI for SATA disks), resolved through its
    ``Depends`` to the real ``linux-image-<release>`` package. If apt cannot resolve or download
    the packages, ``apt-get update`` is run once and the whole step is retried.

    Raises :class:`GuestBuildError` with the failing command and its output.
    """
    root = (cache_root if cache_root is not None else default_cache_root()).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    meta = kernel_meta or os.environ.get("KERNEL_META") or DEFAULT_KERNEL_META
    init_bytes = _read_init()

    updated = False
    while True:
        try:
            resolved = _resolve_memoized(root, meta)
        except _AptError as e:
            if updated:
                raise GuestBuildError(f"{e}\n(apt-get update did not help)") from e
            with _locked(root):
                # Another process may have updated the lists while we waited for the lock.
                try:
                    resolved = _resolve_memoized(root, meta)
                except _AptError:
                    _apt_update()
                    updated = True
                    continue
        try:
            qga = _qga_bundle(root, resolved)
        except _AptError as e:
            if updated:
                raise GuestBuildError(f"{e}\n(apt-get update did not help)") from e
            _apt_update()
            updated = True
            continue
        key, inputs = _key(resolved, init_bytes, qga)
        final = root / "guests" / key
        if _complete(final):
            return _images(final, key)
        with _locked(root):
            if _complete(final):  # built by another process while we waited
                return _images(final, key)
            try:
                debs = _download(root, resolved)
            except _AptError as e:
                if updated:
                    raise GuestBuildError(f"{e}\n(apt-get update did not help)") from e
                log.info("apt-get download failed; running apt-get update once and retrying")
                _apt_update()
                updated = True
                continue
            _build(root, final, debs, init_bytes, inputs, qga)
            return _images(final, key)


def _qga_bundle(root: Path, resolved: _Resolved) -> qga_agent.Bundle:
    """The guest agent's files (``agent.py``): found with a few stat() calls, made under the lock."""
    def download() -> Path:
        return _download_one(root, qga_agent.PACKAGE, resolved.qga_version)

    def unavailable() -> Path:
        raise RuntimeError("not cached")

    try:
        return qga_agent.bundle(root, resolved.qga_version, unavailable, _run)
    except RuntimeError:
        pass
    with _locked(root):
        try:
            return qga_agent.bundle(root, resolved.qga_version, download, _run)
        except GuestBuildError:
            raise
        except (RuntimeError, OSError) as e:
            raise GuestBuildError(f"bundling the guest agent: {e}") from e


def _read_init() -> bytes:
    try:
        return INIT_SCRIPT.read_bytes()
    except OSError as e:
        raise GuestBuildError(f"cannot read the guest /init script {INIT_SCRIPT}: {e}") from e


def _images(final: Path, key: str) -> GuestImages:
    return GuestImages(kernel=final / "vmlinuz", initrd=final / "initrd.img", key=key)


def _complete(final: Path) -> bool:
    # manifest.json is written last, before the directory is renamed into place.
    return (final / "manifest.json").is_file()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``root/.lock`` (released by the kernel if the process dies)."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building the test guest (%s)", root / ".lock")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# apt: resolve versions, download, update


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None, apt: bool = False,
         timeout: float = 120.0) -> str:
    """Run a command; return stdout. Failures raise with the command line and its output."""
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, env=_APT_ENV, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
    except FileNotFoundError as e:
        raise GuestBuildError(f"{what}: {argv[0]} not found ({e}); is this a Debian system?") from e
    except subprocess.TimeoutExpired as e:
        raise GuestBuildError(f"{what}: `{' '.join(argv)}` timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        err = _AptError if apt else GuestBuildError
        output = (proc.stderr.strip() or proc.stdout.strip() or "(no output)")[-2000:]
        raise err(f"{what}: `{' '.join(argv)}` exited {proc.returncode}:\n{output}")
    return proc.stdout


def _apt_update() -> None:
    log.info("running apt-get update")
    if os.geteuid() != 0:
        raise GuestBuildError(
            "the apt package lists cannot resolve the test guest's packages and `apt-get update` "
            "needs root: run `sudo apt-get update` once"
        )
    _run(["apt-get", "update"], what="apt-get update", timeout=_APT_TIMEOUT_S)


def _apt_state_fingerprint() -> list[list[object]]:
    """stat() of apt's lists and config: if none changed, apt would resolve the same versions."""
    out: list[list[object]] = []
    for base in _APT_STATE_PATHS:
        if not base.exists():
            continue
        for p in sorted(base.rglob("*")):
            if p.name == "lock" or "partial" in p.parts or "auxfiles" in p.parts:
                continue
            with contextlib.suppress(OSError):
                st = p.stat()
                if stat.S_ISREG(st.st_mode):
                    out.append([str(p), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def _resolve_memoized(root: Path, meta: str) -> _Resolved:
    if os.environ.get("APT_CONFIG"):
        return _resolve(meta)  # apt's state may live elsewhere: the fingerprint can't see it
    memo = root / f"resolved-{_safe(meta)}.json"
    fingerprint = _apt_state_fingerprint()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(memo.read_text())
        if data["fingerprint"] == fingerprint and data["meta"] == meta:
            return _Resolved(**data["resolved"])
    resolved = _resolve(meta)
    tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(
        {"meta": meta, "fingerprint": fingerprint, "resolved": resolved.__dict__}, indent=1))
    tmp.replace(memo)
    return resolved


def _candidates(packages: Sequence[str]) -> dict[str, str]:
    """Candidate versions from one ``apt-cache policy`` run; packages without one are left out."""
    out = _run(["apt-cache", "policy", *packages], what="resolving package versions", apt=True)
    found: dict[str, str] = {}
    current: str | None = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1].split(":")[0]  # "name:" or "name:amd64:"
        elif current is not None and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                found[current] = version
    return found


def _resolve(meta: str) -> _Resolved:
    """Resolve ``meta`` to the real kernel package and version, and busybox-static's version.

    ``meta`` may also name a real kernel package (one whose Depends name no other linux-image).
    """
    cands = _candidates([meta, BUSYBOX_PACKAGE, qga_agent.PACKAGE])
    missing = [p for p in (meta, BUSYBOX_PACKAGE, qga_agent.PACKAGE) if p not in cands]
    if missing:
        raise _AptError(
            f"apt has no installable candidate for {', '.join(missing)} (empty or stale package "
            "lists, or a wrong KERNEL_META?)"
        )
    show = _run(["apt-cache", "show", f"{meta}={cands[meta]}"], what=f"reading {meta}'s Depends",
                apt=True)
    depends = ""
    for line in show.splitlines():
        if line.startswith("Depends:"):
            depends = line.split(":", 1)[1]
            break  # the first stanza is enough: same package and version
    kernel_package, kernel_version = meta, cands[meta]
    for alternative in depends.split(","):
        m = re.match(r"\s*(linux-image-\d[^\s(|]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", alternative)
        if m:
            kernel_package = m.group(1)
            kernel_version = m.group(2) or ""
            break
    if not kernel_version:
        real = _candidates([kernel_package])
        if kernel_package not in real:
            raise _AptError(f"apt has no candidate for {kernel_package} (from {meta}'s Depends)")
        kernel_version = real[kernel_package]
    log.info("resolved %s -> %s %s, %s %s", meta, kernel_package, kernel_version, BUSYBOX_PACKAGE,
             cands[BUSYBOX_PACKAGE])
    return _Resolved(kernel_package, kernel_version, cands[BUSYBOX_PACKAGE], cands[qga_agent.PACKAGE])


def _deb_glob(package: str, version: str) -> str:
    # apt-get download names files NAME_VERSION_ARCH.deb with the epoch's ':' written as %3a.
    return f"{package}_{version.replace(':', '%3a')}_*.deb"


def _download(root: Path, resolved: _Resolved) -> dict[str, Path]:
    """Return the .debs of both packages, downloading the ones the cache lacks (caller holds the lock)."""
    debs_dir = root / "debs"
    debs_dir.mkdir(exist_ok=True)
    wanted = {
        resolved.kernel_package: resolved.kernel_version,
        BUSYBOX_PACKAGE: resolved.busybox_version,
    }
    return {package: _download_one(root, package, version) for package, version in wanted.items()}


def _download_one(root: Path, package: str, version: str) -> Path:
    """One package's .deb from the cache, downloaded if missing (caller holds the lock)."""
    debs_dir = root / "debs"
    debs_dir.mkdir(exist_ok=True)
    have = sorted(debs_dir.glob(_deb_glob(package, version)))
    if have:
        return have[0]
    tmp_root = root / "tmp"
    tmp_root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=tmp_root) as tmp:
        log.info("apt-get download %s=%s", package, version)
        t0 = time.monotonic()
        _run(["apt-get", "download", f"{package}={version}"], cwd=Path(tmp),
             what=f"downloading {package}={version}", apt=True, timeout=_APT_TIMEOUT_S)
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise GuestBuildError(
                f"apt-get download {package}={version} left {len(got)} .deb files, expected 1")
        target = debs_dir / got[0].name
        os.replace(got[0], target)
        log.info("downloaded %s (%.1f MB) in %.1f s", target.name, target.stat().st_size / 1e6,
                 time.monotonic() - t0)
    # Keep the cache from growing with every kernel update: drop other versions of this package.
    for old in debs_dir.glob(f"{package}_*.deb"):
        if old != target and old.name.split("_")[0] == package:
            old.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------------------------------
# build


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _key(resolved: _Resolved, init_bytes: bytes,
         qga: qga_agent.Bundle) -> tuple[str, dict[str, object]]:
    inputs: dict[str, object] = {
        "layout": LAYOUT_VERSION,
        "kernel_package": resolved.kernel_package,
        "kernel_version": resolved.kernel_version,
        "busybox_package": BUSYBOX_PACKAGE,
        "busybox_version": resolved.busybox_version,
        "init_sha256": hashlib.sha256(init_bytes).hexdigest(),
        "modules": list(GUEST_MODULES),
        "optional_modules": list(OPTIONAL_MODULES),
        "qga_version": resolved.qga_version,
        "qga_bundle": qga.digest,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    release = resolved.kernel_package.removeprefix("linux-image-")
    return f"{_safe(release)}-{digest}", inputs


def _build(root: Path, final: Path, debs: dict[str, Path], init_bytes: bytes,
           inputs: dict[str, object], qga: qga_agent.Bundle) -> None:
    """Extract the .debs, assemble the initramfs, and rename the result to ``final`` (lock held)."""
    t0 = time.monotonic()
    tmp_root = root / "tmp"
    tmp_root.mkdir(exist_ok=True)
    # Everything in tmp/ belongs to a builder holding the lock; we hold it, so these are leftovers
    # of a killed build.
    for stale in tmp_root.iterdir():
        if stale.name.startswith("build-"):
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=tmp_root))
    try:
        out = work / "out"
        out.mkdir()
        kernel_tree = work / "kernel"
        busybox_tree = work / "busybox"
        kernel_deb = debs[str(inputs["kernel_package"])]
        _run(["dpkg-deb", "-x", str(kernel_deb), str(kernel_tree)], what=f"extracting {kernel_deb.name}")
        _run(["dpkg-deb", "-x", str(debs[BUSYBOX_PACKAGE]), str(busybox_tree)],
             what=f"extracting {debs[BUSYBOX_PACKAGE].name}")

        release, vmlinuz = _find_kernel(kernel_tree)
        os.replace(vmlinuz, out / "vmlinuz")
        modules = _collect_modules(kernel_tree / "lib" / "modules" / release, GUEST_MODULES,
                                   OPTIONAL_MODULES)
        busybox = busybox_tree / "bin" / "busybox"
        if not busybox.is_file():
            raise GuestBuildError(f"{debs[BUSYBOX_PACKAGE].name} has no bin/busybox")

        cpio = _Cpio()
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "root", "run", "sbin",
                  "sys", "tmp", "usr", "usr/bin", "usr/sbin"):
            cpio.add_dir(d, 0o1777 if d == "tmp" else 0o755)
        # The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
        cpio.add_node("dev/console", stat.S_IFCHR | 0o600, 5, 1)
        cpio.add_file("init", init_bytes, 0o755)
        cpio.add_file("bin/busybox", busybox.read_bytes(), 0o755)
        for name, data in modules:
            cpio.add_file(f"lib/modules/{name}.ko", data, 0o644)
        # The guest agent and the libraries it loads, each at its host path (see agent.py).
        made = {"bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "root", "run", "sbin", "sys",
                "tmp", "usr", "usr/bin", "usr/sbin"}
        for guest_path, source in sorted(qga.files.items()):
            parts = guest_path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made:
                    cpio.add_dir(d, 0o755)
                    made.add(d)
            cpio.add_file(guest_path, source.read_bytes(), 0o755)
        # What the agent's guest-get-osinfo reads besides uname().
        cpio.add_file("etc/os-release", b'ID=avirt-test-guest\nNAME="avirt test guest"\n'
                      b'PRETTY_NAME="avirt test guest"\nVERSION_ID=1\n', 0o644)
        order = "".join(f"{name}\n" for name, _ in modules)
        cpio.add_file("etc/avirt-modules", order.encode(), 0o644)
        cpio.add_file("etc/avirt-guest", f"release={release}\nkey={final.name}\n".encode(), 0o644)
        initrd = cpio.finish_gzip()
        (out / "initrd.img").write_bytes(initrd)

        manifest = {
            **inputs,
            "key": final.name,
            "kernel_release": release,
            "module_order": [name for name, _ in modules],
            "vmlinuz_sha256": _sha256_file(out / "vmlinuz"),
            "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - t0, 2),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        final.parent.mkdir(exist_ok=True)
        try:
            os.rename(out, final)
        except OSError as e:
            if not _complete(final):
                raise GuestBuildError(f"cannot move the built guest to {final}: {e}") from e
        log.info("built test guest %s in %.1f s (initrd %d bytes)", final, time.monotonic() - t0,
                 len(initrd))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find_kernel(tree: Path) -> tuple[str, Path]:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestBuildError(f"expected one boot/vmlinuz-* in the kernel package, found {kernels}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    if not (tree / "lib" / "modules" / release).is_dir():
        raise GuestBuildError(f"the kernel package has no lib/modules/{release}")
    return release, kernels[0]


def _module_name(path: Path) -> str:
    name = path.name.split(".ko", 1)[0]
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes; newer Debian kernels ship .ko.xz/.ko.zst (the 6.1 ones plain .ko)."""
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise GuestBuildError(f"{path.name} is zstd-compressed: install zstd (apt-get install zstd)")
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise GuestBuildError(f"zstd -dc {path} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout
    raise GuestBuildError(f"unknown module compression: {path}")


def _modinfo(data: bytes, origin: str) -> dict[str, str]:
    """The ``key=value`` strings of an ELF64 module's .modinfo section (for ``depends=``)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestBuildError(f"{origin} is not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = sections[shstrndx][4]
    for sh_name, _type, _flags, _addr, offset, size in sections:
        start = strtab_off + sh_name
        name = data[start:data.index(b"\0", start)]
        if name == b".modinfo":
            info: dict[str, str] = {}
            for item in data[offset:offset + size].split(b"\0"):
                k, sep, v = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(k, v)
            return info
    raise GuestBuildError(f"{origin} has no .modinfo section")


def _collect_modules(moddir: Path, wanted: Sequence[str],
                     optional: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    """Return ``(name, ELF bytes)`` of ``wanted`` plus missing dependencies, in load order.

    Built-in ones (listed in modules.builtin) are skipped; anything else missing is an error,
    because /init would then boot without /dev/vda or the power button. An ``optional`` module
    the kernel does not have (neither as a module nor built in) is left out.
    """
    index: dict[str, Path] = {}
    for p in (moddir / "kernel").rglob("*.ko*"):
        index.setdefault(_module_name(p), p)
    builtin: set[str] = set()
    builtin_file = moddir / "modules.builtin"
    if builtin_file.is_file():
        builtin = {_module_name(Path(line.strip())) for line in builtin_file.read_text().splitlines()
                   if line.strip()}

    order: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtin:
            return
        if name in chain:
            raise GuestBuildError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = index.get(name)
        if path is None:
            needed = f" (needed by {chain[-1]})" if chain else ""
            raise GuestBuildError(f"module {name}{needed} is neither in {moddir} nor built in")
        data = _read_module(path)
        for dep in filter(None, _modinfo(data, str(path)).get("depends", "").split(",")):
            visit(dep.replace("-", "_"), (*chain, name))
        done.add(name)
        order.append((name, data))

    for name in wanted:
        visit(name, ())
    for name in optional:
        if name in index:
            visit(name, ())
    return order


class _Cpio:
    """A newc ("070701") cpio writer with fixed inode numbers, owners and mtimes (reproducible)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 300000

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf.write(header + encoded)
        self._buf.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._buf.write(data)
        self._buf.write(b"\0" * (-len(data) % 4))

    def add_dir(self, name: str, perm: int) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def add_file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_node(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, mode, rdev=(major, minor))

    def finish_gzip(self) -> bytes:
        self._ino = 0
        self._entry("TRAILER!!!", 0)
        out = io.BytesIO()
        # mtime=0 and no file name in the gzip header keep the output reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
            gz.write(self._buf.getvalue())
        return out.getvalue()


def main() -> None:
    """``python -m tests.guest.build``: build (or find) the guest and print its paths."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    images = build_guest()
    print(f"kernel={images.kernel}")
    print(f"initrd={images.initrd}")
    print(f"key={images.key}")
    log.info("took %.2f s", time.monotonic() - t0)


if __name__ == "__main__":
    main()
