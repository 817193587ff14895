"""Without KVM: a host whose /dev/kvm is unusable, made by hiding it in a private mount namespace.

Needs root (unshare + mount), hence the guard; the CI machines run as root. The controller runs in a
child process inside that namespace, so the rest of the suite keeps the real /dev/kvm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import anyio, avirt, sys
from avirt.errors import DomainStartError

XML = ("<domain type='{}'><name>{}</name><memory unit='MiB'>64</memory>"
       "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>")

async def main():
    async with avirt.connect("qemu:///session", state_dir=sys.argv[1]) as conn:
        caps = await conn.capabilities()
        print("kvm", caps["kvm"], caps["accelerators"])
        dom = await conn.define_xml(XML.format("kvm", "k"))
        try:
            await dom.start()
        except DomainStartError as e:
            print("refused:", e)
        tcg = await conn.define_xml(XML.format("qemu", "t"))
        await tcg.start()
        print("tcg", (await tcg.state())[0].name)
        await tcg.destroy()

anyio.run(main)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="hiding /dev/kvm needs root and unshare(1) for a private mount namespace")
def test_without_kvm_kvm_domains_are_refused_and_tcg_runs(tmp_path: Path) -> None:
    inner = f"mount --bind /dev/null /dev/kvm && exec {sys.executable} -c \"$0\" {tmp_path / 'state'}"
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, SCRIPT],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "kvm False ['tcg']"
    assert lines[1].startswith("refused: cannot start domain 'k': it asks for KVM")
    assert lines[2] == "tcg RUNNING"
