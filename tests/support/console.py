"""A console served by waitress in a thread, on a free loopback port (for browser tests)."""

from __future__ import annotations

import threading
import urllib.request

from bcd_node.runtime import NodeContext
from tests.support.waiting import wait_for


class LiveConsole:
    """The console of one node, served by waitress in a thread."""

    def __init__(self, context: NodeContext, port: int) -> None:
        from waitress.server import create_server

        from webadmin import create_app
        self.context = context
        self.url = f"http://127.0.0.1:{port}"
        self.app = create_app(context)
        self.server = create_server(self.app, host="127.0.0.1", port=port, threads=4,
                                    clear_untrusted_proxy_headers=True)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)

    def start(self) -> None:
        self.thread.start()

        def answers() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(answers, 20, what="the console's /healthz")

    def stop(self) -> None:
        self.server.close()
        self.thread.join(timeout=10)
