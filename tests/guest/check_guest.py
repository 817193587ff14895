"""Standalone end-to-end check of the test guest with bare QEMU (no avirt involved).

Run from the repository root: ``.venv/bin/python -m tests.guest.check_guest`` (or give the path
to this file). The name keeps pytest from collecting it: it boots two TCG guests (~10 s) and is
meant for whoever changes the guest builder or /init, not for every test run.

What it proves, so that avirt's own tests can rely on it:

1. The guest boots to ``avirt-guest: ready`` within 60 s, and QMP ``system_powerdown`` makes QEMU
   exit by itself (status 0) within 30 s: /init's power-button handling works.
2. With a 64 MiB qcow2 disk and ``avirt.workload=write avirt.slots=4 avirt.count=8
   avirt.sleep=0``, after ``avirt-wl: done`` and a powerdown, each slot holds the last pattern
   the guest reported for it (``qemu-io -r -c 'read -P 0xPP KM 64k'``); a wrong pattern is
   detected too, so the check can fail.

Synchronisation is by reading the serial console (QEMU's stdout) until a marker line appears,
with a deadline; QMP uses a raw socket whose listening fd is created here and passed to QEMU, so
there is no connect-before-listen race.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

if __package__ in (None, ""):  # run as a file path: make `tests.guest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.guest import GuestImages, build_guest, qemu_argv_for_guest
else:
    from . import GuestImages, build_guest, qemu_argv_for_guest

READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
WORKLOAD_TIMEOUT_S = 60.0

_WL_LINE = re.compile(r"avirt-wl: i=(\d+) slot=(\d+) pat=0x([0-9a-f]{2})")


class CheckFailed(AssertionError):
    """A check failed; the message carries the serial output collected so far."""


class Guest:
    """A QEMU process running the test guest, its serial console (stdout) and a raw QMP socket."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        self.qmp_path = workdir / "qmp.sock"
        self.stderr_path = workdir / "qemu.stderr"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.qmp_path))
        listener.listen(1)
        fd = listener.fileno()
        argv = [*argv, "-chardev", f"socket,id=qmp0,fd={fd},server=on,wait=off",
                "-mon", "chardev=qmp0,mode=control"]
        self.serial = ""
        with self.stderr_path.open("wb") as stderr:
            self.t_spawn = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=stderr, pass_fds=[fd])
        listener.close()  # QEMU has its own copy; connections queue in the backlog until it accepts
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._eof = False
        self._qmp: socket.socket | None = None
        self._qmp_file: Any = None

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._qmp is not None:
            self._qmp.close()
        self._sel.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    # serial console

    def _read_some(self, deadline: float) -> bool:
        """Read what the serial port has (waiting until ``deadline``); False at EOF."""
        assert self.proc.stdout is not None
        if self._eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._sel.select(remaining):
            return True
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            self._eof = True
            return False
        # The guest's tty sends \r\n; a \r\n split over two reads is why \r is dropped alone.
        self.serial += chunk.decode("ascii", errors="replace").replace("\r", "")
        return True

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read the serial output until a line matches ``pattern``; fail at the deadline or EOF."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        pos = 0
        while True:
            # Only complete lines count: a marker could arrive in two reads.
            complete = self.serial[: self.serial.rfind("\n") + 1]
            m = rx.search(complete, pos)
            if m:
                return m
            pos = max(0, len(complete) - 1)
            for err in re.finditer(r"^(avirt-guest: error.*|avirt-wl: error.*|Kernel panic.*)$",
                                   complete, re.MULTILINE):
                self.fail(f"guest reported {err.group(0)!r} while waiting for {pattern!r}")
            if not self._read_some(deadline):
                self.fail(f"QEMU closed the serial port (exit {self.proc.wait()}) before {pattern!r}")
            if time.monotonic() >= deadline:
                self.fail(f"no {pattern!r} on the serial console within {timeout:.0f} s")

    def fail(self, message: str) -> NoReturn:
        stderr = self.stderr_path.read_text(errors="replace").strip()
        raise CheckFailed(f"{message}\n--- serial ---\n{self.serial}\n--- qemu stderr ---\n{stderr}")

    # QMP

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command (connecting and negotiating on first use); return its ``return``."""
        if self._qmp is None:
            self._qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._qmp.settimeout(10)
            self._qmp.connect(str(self.qmp_path))
            self._qmp_file = self._qmp.makefile("rb")
            greeting = json.loads(self._qmp_file.readline())
            if "QMP" not in greeting:
                self.fail(f"unexpected QMP greeting {greeting}")
            self.qmp("qmp_capabilities")
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._qmp.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            line = self._qmp_file.readline()
            if not line:
                self.fail(f"QMP connection closed while waiting for the reply to {command}")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                self.fail(f"QMP {command} failed: {reply['error']}")
            # an event: ignore

    def wait_exit(self, timeout: float) -> int:
        """Drain the serial port until QEMU closes it, then reap QEMU; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._read_some(deadline):
            if time.monotonic() >= deadline:
                self.fail(f"QEMU did not exit within {timeout:.0f} s")
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail(f"QEMU closed its stdout but did not exit within {timeout:.0f} s")


def _powerdown(guest: Guest) -> float:
    t0 = time.monotonic()
    guest.qmp("system_powerdown")
    rc = guest.wait_exit(EXIT_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    if rc != 0:
        guest.fail(f"QEMU exited {rc} after system_powerdown, expected 0")
    guest.wait_for(r"^avirt-guest: poweroff$", 0)
    return elapsed


def check_powerdown(images: GuestImages, workdir: Path) -> dict[str, float]:
    """Boot without a disk, wait for ready, power down; return the timings."""
    with Guest(qemu_argv_for_guest(images), workdir) as guest:
        m = guest.wait_for(r"^avirt-guest: ready uptime=([0-9.]+)$", READY_TIMEOUT_S)
        ready = time.monotonic() - guest.t_spawn
        down = _powerdown(guest)
    return {"ready_s": ready, "guest_uptime_s": float(m.group(1)), "powerdown_s": down}


def _qemu_io_read(disk: Path, pattern: int, slot: int) -> tuple[bool, str]:
    cmd = f"read -P 0x{pattern:02x} {slot}M 64k"
    proc = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", cmd, str(disk)],
                          capture_output=True, text=True, check=False, timeout=60)
    out = proc.stdout + proc.stderr
    ok = proc.returncode == 0 and "Pattern verification failed" not in out
    return ok, f"{cmd}: rc={proc.returncode} {out.strip()}"


def check_workload(images: GuestImages, workdir: Path) -> dict[str, float]:
    """Boot with a disk and a finite write loop; check every slot's last reported pattern on disk."""
    slots, count = 4, 8
    disk = workdir / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    argv = qemu_argv_for_guest(
        images, disk=disk,
        extra_cmdline=f"avirt.workload=write avirt.slots={slots} avirt.count={count} avirt.sleep=0")
    with Guest(argv, workdir) as guest:
        guest.wait_for(r"^avirt-guest: ready uptime=", READY_TIMEOUT_S)
        ready = time.monotonic() - guest.t_spawn
        t0 = time.monotonic()
        guest.wait_for(r"^avirt-wl: done$", WORKLOAD_TIMEOUT_S)
        writes_s = time.monotonic() - t0
        down = _powerdown(guest)
        reported = [tuple(int(g, 16) if j == 2 else int(g) for j, g in enumerate(m.groups()))
                    for m in _WL_LINE.finditer(guest.serial)]
        if [r[0] for r in reported] != list(range(count)):
            guest.fail(f"expected writes i=0..{count - 1}, the guest reported {reported}")
        last: dict[int, int] = {}
        for i, slot, pat in reported:
            if slot != i % slots or pat != i % 254 + 1:
                guest.fail(f"write i={i} reported slot={slot} pat={pat:#04x}, expected "
                           f"slot={i % slots} pat={i % 254 + 1:#04x}")
            last[slot] = pat
    for slot, pat in sorted(last.items()):
        ok, detail = _qemu_io_read(disk, pat, slot)
        if not ok:
            raise CheckFailed(f"slot {slot} does not hold the last reported pattern: {detail}")
    # The check itself must be able to fail: slot 0's *first* pattern was overwritten.
    ok, detail = _qemu_io_read(disk, 1, 0)
    if ok:
        raise CheckFailed(f"qemu-io accepted a pattern that should have been overwritten: {detail}")
    return {"ready_s": ready, "writes_s": writes_s, "powerdown_s": down}


def main() -> int:
    """Build, then run both checks; print timings. Exit status 0 when everything passed."""
    t0 = time.monotonic()
    images = build_guest()
    print(f"build_guest: {time.monotonic() - t0:.2f} s  key={images.key}")
    try:
        with tempfile.TemporaryDirectory(prefix="avirt-check-guest-") as tmp:
            (Path(tmp) / "a").mkdir()
            (Path(tmp) / "b").mkdir()
            r1 = check_powerdown(images, Path(tmp) / "a")
            print(f"powerdown check: ready after {r1['ready_s']:.2f} s (guest uptime "
                  f"{r1['guest_uptime_s']:.2f} s), QEMU exited {r1['powerdown_s']:.2f} s after "
                  "system_powerdown")
            r2 = check_workload(images, Path(tmp) / "b")
            print(f"workload check: ready after {r2['ready_s']:.2f} s, 8 writes in "
                  f"{r2['writes_s']:.2f} s, QEMU exited {r2['powerdown_s']:.2f} s after "
                  "system_powerdown, all 4 slots verified")
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print("check_guest: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
