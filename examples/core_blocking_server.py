"""A blocking SMTP server on smtp_core alone: one connection at a time, every decision Accept.

Usage: python3 examples/core_blocking_server.py [HOST [PORT]]   (default 127.0.0.1 1025)
"""

import socket
import sys

from smtp_core import (
    DECISION_EVENTS,
    NEED_DATA,
    Accept,
    Closed,
    Config,
    EndOfMessage,
    MessageData,
    ServerConnection,
)

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 1025
listener = socket.create_server((host, port))
print("listening on {}:{}".format(*listener.getsockname()[:2]), flush=True)
while True:
    sock, peer = listener.accept()
    conn = ServerConnection(Config(hostname="localhost"), peer=peer[:2])
    with sock:
        try:
            while not isinstance(event := conn.next_event(), Closed):
                if event is NEED_DATA:  # flush the engine's own replies, then read
                    sock.sendall(conn.data_to_send())
                    conn.receive_data(sock.recv(65536))  # b"" (EOF) ends the session
                elif isinstance(event, MessageData):
                    pass  # content, a piece at a time as it arrives: store or scan it here
                elif isinstance(event, DECISION_EVENTS):
                    if isinstance(event, EndOfMessage):
                        rcpts = ", ".join(event.recipients)
                        print(f"<{event.sender}> -> {rcpts}: {event.size} bytes", flush=True)
                    conn.send(Accept())  # the reply joins the buffer, flushed before each read
            sock.sendall(conn.data_to_send())  # the 221, or whatever ended the session
        except OSError as exc:
            print(f"{peer[0]}: {exc}", flush=True)
