#!/usr/bin/env python3
"""Holds many connections to a unix socket that never send the version handshake.

usage: idleconnections.py SOCKET COUNT
Opens COUNT connections (raising its own open-file limit first), prints "opened N", then reads
commands on stdin, one per line:
  count   prints "open N closed M": how many the server has closed (end of stream) so far
  quit    exits (closing them all)
A connection the server has not accepted yet still counts as open: it is in the listen backlog.
"""
import os
import resource
import select
import socket
import sys

path, count = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))

connections = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Blocking: with the server's listen backlog full, connect() waits for room (a socket with a
    # timeout is non-blocking underneath, and a unix socket then fails with EAGAIN instead).
    s.connect(path)
    s.setblocking(False)
    connections.append(s)
print(f"opened {len(connections)}", flush=True)

closed = set()
for line in sys.stdin:
    command = line.strip()
    if command == "count":
        poller = select.poll()
        for index, s in enumerate(connections):
            if index not in closed:
                poller.register(s.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        by_fd = {s.fileno(): index for index, s in enumerate(connections)}
        for fd, _ in poller.poll(0):
            try:
                data = os.read(fd, 1)
            except (BlockingIOError, InterruptedError):
                continue
            except (ConnectionResetError, OSError):
                data = b""
            if data == b"":
                closed.add(by_fd[fd])
        print(f"open {len(connections) - len(closed)} closed {len(closed)}", flush=True)
    elif command == "quit":
        break
for s in connections:
    s.close()
