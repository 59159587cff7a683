#!/usr/bin/env python3
"""Recording relay for p11-kit RPC traffic (golden vectors for the unit tests).

Listens on a unix socket, connects every accepted client to a real `p11-kit server`
socket, forwards bytes in both directions and records them. After the one-byte version
handshake each direction is a sequence of frames:
    call code (u32 BE) | options length (u32 BE) | body length (u32 BE) | options | body
When the driver sends SIGTERM (or the optional --once connection finishes), the recorded
bodies are written as one text file:
    # comment header
    > <hex of request body>
    < <hex of response body>
Requests and responses are written in the order they were received by the relay.

usage: capture.py --listen SOCK --upstream SOCK --output FILE [--command TEXT] [--max-frames N]
stdlib only.
"""
import argparse
import os
import selectors
import signal
import socket
import struct
import sys


class Direction:
    """Splits one byte stream into version byte + frames."""

    def __init__(self, marker):
        self.marker = marker
        self.buffer = bytearray()
        self.version = None

    def feed(self, data, frames):
        self.buffer += data
        if self.version is None:
            if not self.buffer:
                return
            self.version = self.buffer[0]
            del self.buffer[:1]
        while len(self.buffer) >= 12:
            code, olen, dlen = struct.unpack(">III", self.buffer[:12])
            if len(self.buffer) < 12 + olen + dlen:
                break
            body = bytes(self.buffer[12 + olen:12 + olen + dlen])
            del self.buffer[:12 + olen + dlen]
            frames.append((self.marker, code, body))


class Session:
    def __init__(self, client, upstream):
        self.client = client
        self.upstream = upstream
        self.up = Direction(">")    # client -> server
        self.down = Direction("<")  # server -> client


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--command", default="")
    parser.add_argument("--header", default="captured from p11-kit-client.so 0.24.1 <-> p11-kit server 0.24.1, SoftHSM 2.6")
    parser.add_argument("--max-frames", type=int, default=300)
    args = parser.parse_args()

    if os.path.exists(args.listen):
        os.unlink(args.listen)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.listen)
    listener.listen(8)

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    frames = []
    versions = {">": None, "<": None}
    sessions = []
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def close(session):
        for sock in (session.client, session.upstream):
            try:
                selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        if session in sessions:
            sessions.remove(session)

    while not stop["now"]:
        try:
            events = selector.select(timeout=0.2)
        except InterruptedError:
            continue
        for key, _ in events:
            if key.data is None:
                client, _ = listener.accept()
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(args.upstream)
                session = Session(client, upstream)
                sessions.append(session)
                selector.register(client, selectors.EVENT_READ, (session, True))
                selector.register(upstream, selectors.EVENT_READ, (session, False))
                continue
            session, from_client = key.data
            source = session.client if from_client else session.upstream
            target = session.upstream if from_client else session.client
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                close(session)
                continue
            target.sendall(data)
            direction = session.up if from_client else session.down
            direction.feed(data, frames)
            if direction.version is not None and versions[direction.marker] is None:
                versions[direction.marker] = direction.version

    for session in list(sessions):
        close(session)
    listener.close()
    os.unlink(args.listen)

    kept = frames[:args.max_frames]
    # Never end on a request without its answer.
    if kept and kept[-1][0] == ">" and len(frames) > len(kept):
        kept = kept[:-1]
    with open(args.output, "w") as out:
        out.write("# %s, command: %s\n" % (args.header, args.command))
        out.write("# client version byte: %s\n" % versions[">"])
        out.write("# server version byte: %s\n" % versions["<"])
        if len(frames) > len(kept):
            out.write("# truncated: %d of %d frames kept\n" % (len(kept), len(frames)))
        for marker, _, body in kept:
            out.write("%s %s\n" % (marker, body.hex()))
    print("%s: %d frames" % (args.output, len(kept)), file=sys.stderr)


if __name__ == "__main__":
    main()
