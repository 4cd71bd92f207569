#!/usr/bin/env python3
"""Records what a real NBD client sends, as seeds for the nbd-handshake fuzz target.

Listens on 127.0.0.1:PORT, forwards each connection to the NBD server on the unix socket SOCKET
(nbdkit memory, or thinfast serve), and writes the client's bytes after the server's 18-byte
greeting -- the client flags, the options, the requests -- to OUT_PREFIX-N.bin. Stops after
COUNT connections.

    record-nbd-client.py SOCKET PORT OUT_PREFIX COUNT
"""
import socket
import sys
import threading

GREETING = 18


def pump(source, destination, record=None):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            if record is not None:
                record.extend(data)
            destination.sendall(data)
    except OSError:
        pass
    finally:
        try:
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    server_socket, port, prefix, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    listener = socket.create_server(("127.0.0.1", port))
    for n in range(count):
        client, _ = listener.accept()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.connect(server_socket)
        greeting = b""
        while len(greeting) < GREETING:
            greeting += server.recv(GREETING - len(greeting))
        client.sendall(greeting)
        sent = bytearray()
        back = threading.Thread(target=pump, args=(server, client))
        back.start()
        pump(client, server, sent)
        back.join()
        client.close()
        server.close()
        with open(f"{prefix}-{n}.bin", "wb") as f:
            f.write(sent)
    listener.close()


if __name__ == "__main__":
    main()
