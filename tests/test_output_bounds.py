"""What children leave behind is bounded and private: a chatty server's output held in memory by
head and tail, npm's logs in state_dir 0600."""

from __future__ import annotations

import os
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from t3track import runner
from t3track.config import parse_config
from t3track.host import install


def test_a_chatty_background_child_is_kept_by_head_and_tail_only():
    script = ("import sys\nprint('Token: FIRSTLINE12345', flush=True)\n"
              "sys.stdout.write('x' * (32 << 20))\nprint('\\nlast words', flush=True)")
    process = runner.start([sys.executable, "-c", script])
    try:
        process.proc.wait(timeout=60)
    finally:
        process.stop()
    text = process.log_text()
    assert len(text) < runner.LOG_HEAD_BYTES + runner.LOG_TAIL_BYTES + 200
    assert text.startswith("Token: FIRSTLINE12345") and text.rstrip().endswith("last words")
    assert "bytes not kept" in text
    assert process.log_path is None  # nothing was written to a file anywhere


def test_npm_logs_in_state_dir_are_private(tmp_path):
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"error": "not found"}'
            self.send_response(404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    config = parse_config({"root": str(tmp_path / "root"), "state_dir": str(tmp_path / "state"), "registry": url,
                           "package": "t3-no-such-package"})
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    try:
        try:
            install._npm_install(config, "0.0.42", prefix, url)
        except Exception:  # noqa: BLE001 - npm fails (404): what it leaves is the point
            pass
    finally:
        server.shutdown()
        server.server_close()
    logs = [p for p in (tmp_path / "state" / "npm-logs").iterdir()]
    assert logs, "npm wrote no log"
    for log in logs:
        assert stat.S_IMODE(os.lstat(log).st_mode) == 0o600, log
