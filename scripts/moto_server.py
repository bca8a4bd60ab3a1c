#!/usr/bin/env python3
"""Runs moto's server for blox's tests on 127.0.0.1 with an OS-assigned port.

Prints one line `PORT=<n>` to stdout once the socket is listening, then serves until it is killed or
its stdin closes, so that a server started by a test process dies with that process.
"""

import logging
import os
import signal
import sys
import threading

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from moto_cbor_bridge import CloudWatchCborBridge


class BridgedMotoServer(ThreadedMotoServer):
    """moto's threaded server with CloudWatch also answering in CBOR, as the Rust SDK calls it."""

    def _server_entry(self) -> None:
        app = CloudWatchCborBridge(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


def main() -> None:
    # Request logs on every call would drown the test output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = BridgedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"PORT={port}", flush=True)

    # The parent holds our stdin open for as long as it wants us; EOF (it exited or dropped the pipe)
    # or SIGTERM ends the server. os._exit skips joining werkzeug's handler threads.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
