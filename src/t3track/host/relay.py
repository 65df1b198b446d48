"""The way in to a confined candidate (see t3track.host.confine): run inside its sandbox, as its user.

Standard library only, run as `python -I -S -c <this source> LISTEN_FD PORT ARGV...`. LISTEN_FD is a
listening socket t3track made on the host's 127.0.0.1 before the sandbox existed (a socket keeps the
network namespace it was made in); the server, started here as ARGV, listens on 127.0.0.1:PORT in the
sandbox's own namespace, which nothing outside can reach. Each connection accepted on LISTEN_FD is
joined to one made to the server, bytes copied both ways: the probe's HTTP gets in, and the server
still reaches nothing but its own loopback. The relay exits with the server's status (a signal as
128+N), and passes SIGTERM/SIGINT on to it.
"""

import os
import signal
import socket
import sys
import threading


def pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def join(client, port):
    try:
        server = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    except OSError:
        client.close()  # not listening yet: the caller's readiness poll asks again
        return
    server.settimeout(None)
    back = threading.Thread(target=pump, args=(server, client), daemon=True)
    back.start()
    pump(client, server)
    back.join()
    client.close()
    server.close()


def accept(listener, port):
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=join, args=(client, port), daemon=True).start()


def main(argv):
    listen_fd, port, command = int(argv[0]), int(argv[1]), argv[2:]
    listener = socket.socket(fileno=listen_fd)
    os.set_inheritable(listen_fd, False)
    pid = os.fork()
    if pid == 0:
        listener.close()  # the server has no business with the host's side
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            sys.stderr.write(f"cannot run {command[0]}: {exc.strerror}\n")
            os._exit(127)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: os.kill(pid, number))
    threading.Thread(target=accept, args=(listener, port), daemon=True).start()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv[1:])
