"""A chain read from qcow2 headers gives exactly what `qemu-img info --backing-chain` gives, and every
case it does not read itself goes to qemu-img (whose answer or error then stands). Real qemu-img."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from avirt.errors import ImageError
from avirt.hosts.local import LocalHost
from avirt.offline import headers
from avirt.offline.headers import Unsure, backing_of, chain_layers

pytestmark = pytest.mark.anyio


def img(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["qemu-img", "create", "-q", *args], check=True, cwd=cwd)


def qemu_img_layers(path: Path, fmt: str = "qcow2") -> list[tuple[str, str]]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", "-f", fmt, str(path)],
                         check=True, capture_output=True, text=True).stdout
    layers = json.loads(out)
    return [(str(path) if i == 0 else layers[i - 1]["full-backing-filename"], layer["format"])
            for i, layer in enumerate(layers)]


def plain(tmp: Path) -> Path:
    """raw base <- qcow2 mid (absolute backing name) <- qcow2 top (relative name)."""
    img("-f", "raw", str(tmp / "base.raw"), "1M")
    img("-f", "qcow2", "-F", "raw", "-b", str(tmp / "base.raw"), str(tmp / "mid.qcow2"))
    img("-f", "qcow2", "-F", "qcow2", "-b", "mid.qcow2", "top.qcow2", cwd=tmp)
    return tmp / "top.qcow2"


def through_dotdot(tmp: Path) -> Path:
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    img("-f", "qcow2", str(tmp / "a" / "base.qcow2"), "1M")
    img("-f", "qcow2", "-F", "qcow2", "-b", "../a/base.qcow2", "top.qcow2", cwd=tmp / "b")
    return tmp / "b" / "top.qcow2"


def through_symlink(tmp: Path) -> Path:
    (tmp / "real").mkdir()
    img("-f", "qcow2", str(tmp / "real" / "base.qcow2"), "1M")
    img("-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", "top.qcow2", cwd=tmp / "real")
    (tmp / "link").symlink_to(tmp / "real")
    return tmp / "link" / "top.qcow2"


def compat_v2(tmp: Path) -> Path:
    img("-f", "qcow2", "-o", "compat=0.10", str(tmp / "base.qcow2"), "1M")
    img("-f", "qcow2", "-o", "compat=0.10", "-F", "qcow2", "-b", str(tmp / "base.qcow2"),
        str(tmp / "top.qcow2"))
    return tmp / "top.qcow2"


def deep(tmp: Path) -> Path:
    img("-f", "qcow2", str(tmp / "l0.qcow2"), "1M")
    for i in range(1, 8):
        img("-f", "qcow2", "-F", "qcow2", "-b", f"l{i - 1}.qcow2", f"l{i}.qcow2", cwd=tmp)
    return tmp / "l7.qcow2"


@pytest.mark.parametrize("build", [plain, through_dotdot, through_symlink, compat_v2, deep])
async def test_headers_read_what_qemu_img_reports(tmp_path: Path, build: Callable[[Path], Path]) -> None:
    top = build(tmp_path)
    expected = qemu_img_layers(top)
    read = await headers._from_headers(LocalHost(), str(top), "qcow2")
    assert read == expected  # read from the headers, not handed to qemu-img
    assert await chain_layers(LocalHost(), str(top), "qcow2") == expected


def with_data_file(tmp: Path) -> Path:
    img("-f", "qcow2", "-o", f"data_file={tmp / 'data.raw'}", str(tmp / "top.qcow2"), "1M")
    return tmp / "top.qcow2"


def json_backing(tmp: Path) -> Path:
    img("-f", "raw", str(tmp / "base.raw"), "1M")
    file = {"driver": "file", "filename": str(tmp / "base.raw")}
    spec = "json:" + json.dumps({"driver": "raw", "file": file})
    img("-f", "qcow2", "-F", "raw", "-b", spec, str(tmp / "top.qcow2"))
    return tmp / "top.qcow2"


def luks(tmp: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "--object", "secret,id=s0,data=pw", "-f", "qcow2",
                    "-o", "encrypt.format=luks,encrypt.key-secret=s0", str(tmp / "top.qcow2"), "1M"],
                   check=True)
    return tmp / "top.qcow2"


@pytest.mark.parametrize("build", [with_data_file, json_backing, luks])
async def test_what_headers_leave_to_qemu_img(tmp_path: Path, build: Callable[[Path], Path]) -> None:
    top = build(tmp_path)
    assert await headers._from_headers(LocalHost(), str(top), "qcow2") is None
    layers = await chain_layers(LocalHost(), str(top), "qcow2")
    assert layers[0] == (str(top), "qcow2")  # qemu-img's answer stands


async def test_a_missing_backing_file_is_qemu_img_s_error(tmp_path: Path) -> None:
    img("-f", "qcow2", str(tmp_path / "base.qcow2"), "1M")
    img("-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", "top.qcow2", cwd=tmp_path)
    (tmp_path / "base.qcow2").unlink()
    with pytest.raises(ImageError, match=r"base\.qcow2"):
        await chain_layers(LocalHost(), str(tmp_path / "top.qcow2"), "qcow2")


async def test_a_file_that_is_not_qcow2_is_qemu_img_s_error(tmp_path: Path) -> None:
    (tmp_path / "top.qcow2").write_bytes(b"not an image" * 100)
    with pytest.raises(ImageError):
        await chain_layers(LocalHost(), str(tmp_path / "top.qcow2"), "qcow2")


def test_headers_refuse_what_they_do_not_know(tmp_path: Path) -> None:
    img("-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", "-u", "top.qcow2", "1M", cwd=tmp_path)
    head = (tmp_path / "top.qcow2").read_bytes()[:65536]
    assert backing_of(head) == ("base.qcow2", "qcow2")
    for broken in (head[:60],                                  # cut short
                   b"QFI\xfa" + head[4:],                      # not the magic
                   head[:4] + (4).to_bytes(4, "big") + head[8:],  # a version from the future
                   head[:72] + (2).to_bytes(8, "big") + head[80:]):  # marked corrupt
        with pytest.raises(Unsure):
            backing_of(broken)
    # No format recorded for the backing file (its extension made one QEMU does not know, which it
    # skips): only probing could tell, and probing is qemu-img's to do.
    unformatted = head.replace(b"\xe2\x79\x2a\xca", b"\x12\x34\x56\x78", 1)
    assert unformatted != head
    with pytest.raises(Unsure):
        backing_of(unformatted)
