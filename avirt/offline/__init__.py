"""Images without a running QEMU: ``qemu-img`` as awaitable work.

For now this package reads backing chains (``qemu-img info --backing-chain``); the offline block jobs
build on the same runner.
"""
