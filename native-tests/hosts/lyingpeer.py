#!/usr/bin/env python3
"""A p11-kit RPC peer that lies, for 20-module-memcheck.sh: it answers the version handshake and
C_Initialize properly, then answers each call of overflowprobe.c with a reply that does not fit the
caller's buffer (more slots, a longer signature, more random bytes, a longer label, more
attributes than asked for, a cut frame), on whichever connection the call arrives. C_Finalize is
answered properly; anything unscripted with CKR_FUNCTION_FAILED.

usage: lyingpeer.py SOCKET_PATH [control]   (serves connections until killed)
With "control" it answers C_OpenSession, C_SignInit and one honest 10-byte C_Sign only: the reply
overflowprobe's control mode writes into a block too small for what it declares.
"""
import os
import socket
import struct
import sys
import threading

CKA_LABEL, CKA_ID = 0x03, 0x102


class Body:
    """A message body as the wire carries it: big-endian integers, length-prefixed arrays."""

    def __init__(self, call, signature):
        self.data = bytearray()
        self.u32(call).array(signature.encode())

    def u32(self, value):
        self.data += struct.pack(">I", value)
        return self

    def u64(self, value):
        self.data += struct.pack(">Q", value)
        return self

    def byte(self, value):
        self.data.append(value)
        return self

    def array(self, value):
        return self.u32(len(value)).raw(value)

    def raw(self, value):
        self.data += value
        return self


def slot_list(count, values):
    body = Body(4, "au").byte(1).u32(count)
    for value in values:
        body.u64(value)
    return bytes(body.data)


def attribute(body, kind, announced, value):
    """One attribute of an 'aA' reply: type, valid, the length announced, then the value as given."""
    return body.u32(kind).byte(1).u32(announced).array(value)


# Replies in the order overflowprobe.c makes its calls (call id, reply body).
SCRIPT = [
    (4, slot_list(1000, range(1, 1001))),                        # C_GetSlotList, 2 slots asked
    (4, slot_list(1000, [1, 2])),                                # ... 1000 announced, 2 given
    (4, slot_list(3, [1, 2]) + b"\0\0\0\3"),                     # ... count 3, the third cut
    (3, bytes(Body(3, "vsusv").byte(2).byte(40).array(b" " * 40)  # C_GetInfo, 40-byte manufacturer
              .u64(0).array(b" " * 32).byte(1).byte(0).data)),
    (10, bytes(Body(10, "u").u64(1).data)),                      # C_OpenSession: session 1
    (42, bytes(Body(42, "").data)),                              # C_SignInit
    (43, bytes(Body(43, "ay").byte(1).array(b"\x5c" * 300).data)),  # C_Sign, 16 bytes asked
    (64, bytes(Body(64, "ay").byte(1).array(b"\x22" * 33).data)),   # C_GenerateRandom, 32 asked
    (24, bytes(attribute(Body(24, "aAu").u32(1), CKA_LABEL, 100, b"L" * 100).u64(0).data)),  # label, 4 asked
    (24, bytes(attribute(Body(24, "aAu").u32(1), CKA_LABEL, 4, b"L" * 100).u64(0).data)),
    (24, bytes(attribute(attribute(attribute(Body(24, "aAu").u32(3), CKA_LABEL, 3, b"lab"),  # 3 for 2
                                   CKA_ID, 2, b"id"), CKA_LABEL, 3, b"xyz").u64(0).data)),
]


def read_exactly(connection, count):
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def send_frame(connection, code, body):
    connection.sendall(struct.pack(">III", code, 0, len(body)) + body)


CONTROL = [
    (10, bytes(Body(10, "u").u64(1).data)),
    (42, bytes(Body(42, "").data)),
    (43, bytes(Body(43, "ay").byte(1).array(b"\x5c" * 10).data)),
]

# Shared by all connections: the module reconnects after a broken reply, and the script goes on.
script = list(CONTROL if sys.argv[2:] == ["control"] else SCRIPT)
script_lock = threading.Lock()


def next_reply(call):
    """The first scripted reply left for this call (a call the module did not send is skipped)."""
    with script_lock:
        for index, (scripted, body) in enumerate(script):
            if scripted == call:
                del script[index]
                return body
    return None


def serve(connection):
    offered = read_exactly(connection, 1)
    if offered is None:
        return
    connection.sendall(bytes([min(offered[0], 2)]))
    while True:
        header = read_exactly(connection, 12)
        if header is None:
            return
        code, options, length = struct.unpack(">III", header)
        request = read_exactly(connection, options + length)
        if request is None:
            return
        call = struct.unpack(">I", request[options:options + 4])[0]
        reply = bytes(Body(call, "").data) if call in (1, 2) else next_reply(call)  # C_Initialize, C_Finalize
        send_frame(connection, code, reply if reply is not None else bytes(Body(0, "u").u64(6).data))


def main():
    path = sys.argv[1]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(4)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve_and_close, args=(connection,), daemon=True).start()


def serve_and_close(connection):
    with connection:
        try:
            serve(connection)
        except OSError:
            pass


if __name__ == "__main__":
    main()
