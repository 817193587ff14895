"""The served protocol: how a client program talks to the controller that holds a state directory.

Bottom up: :mod:`.messages` (msgpack-RPC messages, framed by msgpack's streaming unpacker, with a size
limit) and :mod:`.peer` (one connection's calls, streams and cancellation, symmetric for both ends). The
wire format is documented in docs/protocol.md.
"""

from avirt.rpc.messages import MAX_MESSAGE, ProtocolError
from avirt.rpc.peer import Batch, Handler, Lost, Peer, PeerClosedError, error_from_wire, error_to_wire

__all__ = ["MAX_MESSAGE", "Batch", "Handler", "Lost", "Peer", "PeerClosedError", "ProtocolError",
           "error_from_wire", "error_to_wire"]
