"""Commit or pull? Show an image's backing chain, the advice for merging the image with its backing file,
and (with --apply) carry it out with a progress line. No domain is needed: these are files.

    python examples/image_advisor.py /vm/active.qcow2            # the chain and the advice
    python examples/image_advisor.py /vm/active.qcow2 --apply    # ... and do it

A commit writes the image's own data into its backing file (the image is left empty on top of it); a
pull copies the backing file's data up into the image, which then backs onto what lay below.
"""

from __future__ import annotations

import argparse

import anyio

import avirt

MiB = 1 << 20


async def main(image: str, apply: bool) -> None:
    chain = await avirt.offline.info(image)
    for depth, layer in enumerate(chain):
        share = layer.allocated / layer.virtual_size if layer.virtual_size else 0
        print(f"[{depth}] {layer.path}  {layer.format}  {layer.allocated / MiB:.1f} MiB of "
              f"{layer.virtual_size / MiB:.0f} MiB stored here ({share:.0%})")
    if len(chain) < 2:
        print("no backing file: nothing to merge")
        return
    advice = avirt.offline.advise_reduce(chain)
    print(f"advice: {advice.direction}: {advice.reason}")
    if not apply:
        return
    if advice.direction == "commit":
        job = avirt.offline.commit(image)
    else:
        job = avirt.offline.rebase(image, chain[2].path if len(chain) > 2 else None,
                                   backing_format=chain[2].format if len(chain) > 2 else None)
    async with job:
        async for cur, end in job.progress():
            print(f"{advice.direction}: {cur / end:.0%}")
    print(f"{advice.direction}: {job.status.name.lower() if job.status else '?'}")
    print("chain now: " + " -> ".join(layer.path for layer in await avirt.offline.info(image)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="commit or pull: advice on an image's backing chain")
    parser.add_argument("image")
    parser.add_argument("--apply", action="store_true", help="carry out the advice")
    args = parser.parse_args()
    anyio.run(main, args.image, args.apply)
