"""`make bench`: how closely the smoke runner (components/host/smoke.py) keeps its deadline, measured as it
runs on a host (a subprocess) against a real local server that trickles its answer.

The unit suite (tests/host/test_smoke.py) checks what does not depend on the machine's speed: a check
that would take minutes ends at its deadline with exit 2, never before it. This checks the upper bound:
the runner ends soon after the deadline. Fails (exit 1) when it takes too long.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.host import SMOKE_RUNNER  # noqa: E402 - after the path


class Trickle(http.server.BaseHTTPRequestHandler):
    """`/body`: a 200 whose 200-byte body comes a byte a second; `/headers`: headers a line every 0.2 s."""

    def do_GET(self) -> None:
        try:
            if self.path == "/headers":
                self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                for index in range(200):
                    self.wfile.write(f"X-Pad-{index}: p\r\n".encode())
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1.0)
        except OSError:  # the runner gave up: what is measured
            return

    def log_message(self, format: str, *args: object) -> None:
        return


def run(base_url: str, path: str, deadline: float) -> tuple[int, float]:
    started = time.monotonic()
    checks = f'[{{"http": {{"path": "{path}"}}}}]'
    command = [sys.executable, str(SMOKE_RUNNER), "--base-url", base_url, "--deadline", f"{deadline:g}"]
    proc = subprocess.run(
        [*command, "--interval", "0.05", "--checks", checks],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, time.monotonic() - started


# (what, path, the deadline, the most seconds the runner may take past it)
CASES = [
    ("1 byte/s body, deadline 2 s", "/body", 2.0, 0.5),
    ("trickled headers, deadline 1.5 s", "/headers", 1.5, 0.5),
]


def main() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    _, start_up = run(base_url, "/body", 0.0)  # a deadline of 0: the interpreter's own start-up
    failures = []
    print(f"{'smoke check':<36}{'seconds':>10}{'limit':>8}   (start-up {start_up:.3f} s)")
    for what, path, deadline, slack in CASES:
        code, seconds = run(base_url, path, deadline)
        limit = deadline + slack + start_up
        print(f"{what:<36}{seconds:>10.3f}{limit:>8.2f}")
        if code != 2:
            failures.append(f"{what}: exit {code}, expected 2 (timed out)")
        elif not deadline <= seconds < limit:
            failures.append(f"{what}: ended after {seconds:.2f} s, outside [{deadline}, {limit:.2f})")
    server.shutdown()
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
