"""Real qcow2 chains with a known pattern in every layer, and checks that read them back byte by byte.

The chain of the block-job tests (offsets in MiB, each layer writes 2 MiB, overlapping the one below)::

    base   0x11 @ 0-2      snap1  0x22 @ 1-3      snap2  0x33 @ 2-4      active 0x44 @ 3-5

so through the whole chain the guest sees 0x11 @ 0-1, 0x22 @ 1-2, 0x33 @ 2-3, 0x44 @ 3-5.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
LAYERS = (("base", 0x11, 0), ("snap1", 0x22, 1), ("snap2", 0x33, 2), ("active", 0x44, 3))
#: What the guest sees through the full chain: (pattern, offset MiB, length MiB).
GUEST_VIEW = ((0x11, 0, 1), (0x22, 1, 1), (0x33, 2, 1), (0x44, 3, 2))


@dataclass(frozen=True)
class Chain:
    base: Path
    snap1: Path
    snap2: Path
    active: Path

    def path(self, name: str) -> Path:
        return getattr(self, name)  # type: ignore[no-any-return]


def make_chain(directory: Path, size_mib: int = 16) -> Chain:
    previous: Path | None = None
    for name, pattern, offset in LAYERS:
        path = directory / f"{name}.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if previous is not None:
            argv += ["-F", "qcow2", "-b", str(previous)]
        subprocess.run([*argv, str(path), f"{size_mib}M"], check=True)
        write(path, pattern, offset, 2)
        previous = path
    return Chain(*(directory / f"{name}.qcow2" for name, _, _ in LAYERS))


def write(image: Path, pattern: int, offset_mib: int, length_mib: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -P {pattern:#x} {offset_mib}M {length_mib}M", str(image)],
                   check=True, capture_output=True)


def reads(image: Path, expected: tuple[tuple[int, int, int], ...], *, alone: bool = False) -> list[str]:
    """Mismatches between ``image`` (through its chain, or its own clusters only) and ``expected``."""
    target = ("json:" + json.dumps({"driver": "qcow2", "backing": None,
                                    "file": {"driver": "file", "filename": str(image)}})
              if alone else str(image))
    problems = []
    for pattern, offset, length in expected:
        argv = ["qemu-io", "-r", "-U"] + ([] if alone else ["-f", "qcow2"])
        result = subprocess.run([*argv, "-c", f"read -P {pattern:#x} {offset}M {length}M", target],
                                capture_output=True, text=True)
        if result.returncode != 0 or "verification failed" in result.stdout:
            problems.append(f"{image.name}: {pattern:#x} @ {offset}M+{length}M: {result.stdout.strip()}")
    return problems


def backing_chain(image: Path) -> list[str]:
    """File names of the chain, top first, as qemu-img opens it (-U: QEMU may hold it)."""
    result = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(image)],
                            check=True, capture_output=True, text=True)
    return [layer["filename"] for layer in json.loads(result.stdout)]


def check(image: Path) -> None:
    subprocess.run(["qemu-img", "check", "-U", "-q", str(image)], check=True)
