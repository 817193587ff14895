"""Many programs, one controller: the holder of a state directory serves the API to the others.

:mod:`.server` runs in the program that holds the state directory's lock and answers on a unix socket in
that directory; :mod:`.client` is the driver every other program gets from ``connect()``, so that
``Connection``, ``Domain``, block jobs and events work the same in both. :mod:`.wire` turns the API's
values into the plain data the protocol (:mod:`avirt.rpc`, docs/protocol.md) carries.
"""
