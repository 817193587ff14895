"""Images without a running QEMU: ``qemu-img`` as awaitable work.

The public part is the images API, for files that no domain has to own::

    import avirt

    chain = await avirt.offline.info("/vm/active.qcow2")       # [ImageInfo(path, format, ...)], top first
    used, size = await avirt.offline.allocation("/vm/active.qcow2")
    advice = avirt.offline.advise_reduce(chain)                 # Advice(direction="commit"|"pull", ...)
    job = avirt.offline.commit("/vm/active.qcow2", base="/vm/base.qcow2")
    async with job:                                             # or simply: await job
        async for cur, end in job.progress():
            print(f"{cur / end:.0%}")

``create``, ``commit``, ``rebase`` and ``convert`` return an :class:`ImageJob`; ``info`` and
``allocation`` are coroutines; ``advise_reduce`` is plain arithmetic on a chain. Inside, the same
modules serve shut-off domains: ``qemu_img`` (qemu-img's answers as data), ``plan`` (the steps of a
domain's offline block job), ``imagejob`` (steps run as one awaitable job), ``safety`` (locks, free
space), ``index`` (which domain reads which image, by file identity). The images API is loaded on
first use, so ``import avirt`` does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avirt.offline.advise import Advice, advise_reduce
    from avirt.offline.imagejob import ImageJob
    from avirt.offline.images import allocation, commit, convert, create, info, rebase

__all__ = ["Advice", "ImageJob", "advise_reduce", "allocation", "commit", "convert", "create", "info",
           "rebase"]

_HOME = {"Advice": "advise", "advise_reduce": "advise", "ImageJob": "imagejob"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'avirt.offline' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"avirt.offline.{_HOME.get(name, 'images')}")
    return getattr(module, name)
