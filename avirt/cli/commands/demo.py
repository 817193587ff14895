"""``avirt demo``: the guided tour of ``examples/demo.py``, run from the command line.

The demo is a script of the source checkout, not part of the installed package: this command looks for
``examples/demo.py`` beside the package's directory (where a checkout or an editable install has it),
loads it with :mod:`runpy` without running its ``__main__`` block, and awaits its ``main()`` on this
command's event loop. The demo makes its own images and its own throwaway state directory, so ``-c`` and
``--state-dir`` do not apply and no other avirt command is disturbed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avirt.cli.command import OTHER, Command, CommandError, Context


def demo_path() -> Path:
    """Where the demo lives in a source checkout: ``<checkout>/examples/demo.py``."""
    import avirt

    return Path(avirt.__file__).resolve().parent.parent / "examples" / "demo.py"


async def _demo(ctx: Context, args: argparse.Namespace) -> None:
    import inspect
    import runpy

    path = demo_path()
    if not path.is_file():
        raise CommandError(f"the demo ships with avirt's source checkout (examples/demo.py), and there is "
                           f"none beside this installation: {path} does not exist")
    namespace = runpy.run_path(str(path), run_name="avirt_demo")  # not __main__: it must not run itself
    main = namespace.get("main")
    if not inspect.iscoroutinefunction(main):
        raise CommandError(f"{path} has no 'async def main()' to run")
    await main()


COMMANDS = (
    Command("demo", "Run the guided demo on throwaway images and a throwaway state directory", _demo,
            details="Defines and starts a firmware-only guest on a four-layer qcow2 chain, watches its "
                    "events, takes a live disk snapshot, commits live (intermediate, then active with a "
                    "pivot), checks every byte, reconnects with a new controller, and cleans up. It needs "
                    "QEMU and qemu-img, uses KVM when it can, and its own state directory: -c and "
                    "--state-dir do not apply. The demo is examples/demo.py of the source checkout.",
            example="avirt demo", group=OTHER),
)
