"""Record what a real QEMU says on its QMP monitor, byte for byte, for the fake peer in ``tests/fakeqmp.py``.

Why a recording: the fake QMP server must send what QEMU sends (separators, key order, ``\\r\\n`` line ends,
where the ``id`` goes, which event comes before or after which reply), or the scale tests would exercise a
parser path that never meets real QEMU. Rather than write those bytes down by hand, this script asks a real
``qemu-system-x86_64`` and stores the exchange; ``tests/test_soak.py`` then checks the fake against it.

It speaks raw QMP over a plain socket (no ``qemu.qmp``), so that nothing between QEMU and the file can
re-encode a message. The requests are the exact bytes ``qemu.qmp`` 0.0.6 sends (as avirt's monitor does):
compact JSON (``separators=(",", ":")``) with **no** line end; ``qmp_capabilities`` goes out without an
``id`` (the client negotiates before its id counter is used) and the executes after it carry ``__qmp#00000``,
``__qmp#00001``, ... in order. ``tests/test_soak.py`` checks those request bytes against ``qemu.qmp`` itself.
Three more requests, with other ids, record QEMU's refusal before negotiation and how it escapes the
strings it echoes.

Output, one JSON object per line: ``{"direction": "in" | "out", "raw": "<exact text>"}``, where ``in`` is what
the controller *receives* (QEMU -> client, each line with QEMU's ``\\r\\n``) and ``out`` what it *sends*.

Run (rewrites ``tests/data/qmp-transcript.jsonl``)::

    .venv/bin/python tests/data/record_qmp.py [--out PATH] [--qemu qemu-system-x86_64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "qmp-transcript.jsonl"

#: Each step: (request text, the events that must have arrived before the step is complete). The reply
#: to a request is recognised by its ``id`` (or, for the id-less ``qmp_capabilities``, by being the first
#: non-event message). Events that QEMU sends later than the reply (RESET comes from the main loop after
#: ``system_reset`` has returned) are waited for explicitly, so the transcript holds the order QEMU uses.
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ('{"execute":"query-status","id":"before-negotiation"}', ()),  # refused until qmp_capabilities
    ('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}', ()),
    ('{"execute":"query-status","id":"__qmp#00000"}', ()),
    ('{"execute":"cont","id":"__qmp#00001"}', ("RESUME",)),
    ('{"execute":"query-status","id":"__qmp#00002"}', ()),
    ('{"execute":"stop","id":"__qmp#00003"}', ("STOP",)),
    ('{"execute":"query-status","id":"__qmp#00004"}', ()),
    ('{"execute":"cont","id":"__qmp#00005"}', ("RESUME",)),
    ('{"execute":"system_reset","id":"__qmp#00006"}', ("RESET",)),
    ('{"execute":"x-no-such-command","id":"__qmp#00007"}', ()),
    # Not what qemu.qmp sends, but what QEMU does with strings it echoes (ids, names in error texts): its
    # JSON writer escapes all but printable ASCII as upper-case \uXXXX (DEL too, "/" not at all), and a
    # non-string id comes back as QEMU re-serialises it.
    (r'{"execute":"query-status","id":"\u00e9/\ud83d\ude00\t\u001f\u007f\"\\"}', ()),
    (r'{"execute":"x-\u00e9t\u007f","id":{"n":[1,2.5,null,true,-7]}}', ()),
    ('{"execute":"quit","id":"__qmp#00008"}', ("SHUTDOWN",)),
]

TIMEOUT = 10.0


class Wire:
    """A QMP socket that hands back complete ``\\r\\n``-terminated lines exactly as received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def line(self) -> str | None:
        """The next line (with its ``\\r\\n``), or None at EOF; raises TimeoutError past the deadline."""
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buf:
            if self.eof:
                if self.buf:
                    raise RuntimeError(f"QEMU closed mid-line: {self.buf!r}")
                return None
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        end = self.buf.index(b"\n") + 1
        raw, self.buf = self.buf[:end], self.buf[end:]
        return raw.decode()


def connect(path: str) -> socket.socket:
    """Connect, retrying while QEMU has created the socket file but not yet listens."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)  # no event exists for "QEMU now listens"; bounded by the deadline above


def record(qemu: str) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    workdir = tempfile.mkdtemp(prefix="record-qmp-")
    path = os.path.join(workdir, "qmp.sock")
    proc = subprocess.Popen(
        [qemu, "-machine", "q35", "-m", "64", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
         "-qmp", f"unix:{path},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wire = Wire(connect(path))
        received: Callable[[], str | None] = wire.line

        def take() -> dict[str, object]:
            raw = received()
            if raw is None:
                raise RuntimeError("QEMU closed the monitor early")
            records.append({"direction": "in", "raw": raw})
            msg: dict[str, object] = json.loads(raw)
            return msg

        greeting = take()
        assert "QMP" in greeting, greeting
        for request, events in STEPS:
            wire.sock.sendall(request.encode())
            records.append({"direction": "out", "raw": request})
            wanted_id = json.loads(request).get("id")
            replied, seen = False, set[str]()
            while not replied or not set(events) <= seen:
                msg = take()
                if "event" in msg:
                    seen.add(str(msg["event"]))
                elif msg.get("id") == wanted_id:
                    replied = True
                else:
                    raise RuntimeError(f"unexpected message after {request}: {msg}")
        if wire.line() is not None:  # after quit's SHUTDOWN comes EOF, nothing else
            raise RuntimeError("QEMU sent more after SHUTDOWN")
        wire.sock.close()
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != 0:
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"QEMU exited {proc.returncode}: {stderr}")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    args = parser.parse_args()
    records = record(args.qemu)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} messages to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
