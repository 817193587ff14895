"""Many programs, one controller: the holder of a state directory serves the API to the others.

:mod:`.server` runs in the program that holds the state directory's lock and answers on a unix socket in
that directory; :mod:`.client` is the driver the other programs use to reach it, so that ``Connection``,
``Domain``, block jobs and events work the same in both; :mod:`.shared` is what ``connect()`` gives for a
local state directory, either of the two, and the hand-over when the holder goes away. :mod:`.wire` turns
the API's values into the plain data the protocol (:mod:`avirt.rpc`, docs/protocol.md) carries.
"""
