"""Stand-in images for the rollout tests, built on the tier's base images without a registry.

- `gpu-deploy-test/caddy:bookworm`: the bash base image plus the REAL Caddy binary of Debian bookworm's
  `caddy` package (2.6.2), at /usr/bin/caddy as in the official image, with /etc/caddy (where the stack
  uploads its main Caddyfile). The stack pins the official `caddy:2.10.2-alpine` image by tag and
  digest (components/core/vocabulary.py PROXY_IMAGE); this tier cannot pull it (no registry here), so it
  runs Debian's 2.6.2 binary with the same Caddyfile and the same features: global `admin` and
  `auto_https off`, `import` of a glob, `:<port>` and `http://<host>:<port>` sites, `reverse_proxy`,
  `caddy reload` through the admin endpoint, `caddy run --resume`.
- `gpu-deploy-test/service:bookworm`: the python3 base image plus a tiny HTTP server (SERVICE_SCRIPT)
  answering `/health` and `/` with its release id (env RELEASE), listening only after START_DELAY_S
  seconds (a model load), stopping gracefully on SIGTERM.

The Caddy binary is fetched once with `apt-get download caddy`, extracted with `dpkg-deb -x`, and cached
under the tier's cache directory (tests.real.images.CACHE_DIR/caddy/<deb name>/caddy), so a later run
only makes the two small images (`docker create` of a base image, `docker cp` of a tar, `docker commit`:
a `docker build` COPY would drop the binary's file capability).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.real.engine import Engine
from tests.real.images import CACHE_DIR, BaseImages, _locked
from tests.real.procs import SetupError, run_checked

PROXY_IMAGE = "gpu-deploy-test/caddy:bookworm"
SERVICE_IMAGE = "gpu-deploy-test/service:bookworm"
CADDY_PACKAGE = "caddy"
SERVICE_PORT = 8080
# struct vfs_cap_data (revision 2) for cap_net_bind_service=+ep, as `setcap` writes it: magic with the
# effective flag, permitted (bit 10), inheritable, and the upper 32 bits of both
NET_BIND_SERVICE_EP = struct.pack("<5I", 0x02000000 | 0x1, 1 << 10, 0, 0, 0)

# The stand-in service: /health and / answer {"release": RELEASE}; nothing listens for START_DELAY_S
# seconds first. SIGTERM (what `docker stop` sends) ends it at once while it "loads", else after the
# requests in flight are answered (PID 1 ignores a signal it has no handler for: Docker would wait out
# the whole grace period and SIGKILL it).
SERVICE_SCRIPT = """\
import http.server
import json
import io
import json
import os
import signal
import sys
import threading
import time

RELEASE = os.environ.get("RELEASE", "unknown")
PORT = int(os.environ.get("PORT", "8080"))
server = None


def stop(signum, frame):
    if server is None:
        sys.exit(0)
    threading.Thread(target=server.shutdown, daemon=True).start()


signal.signal(signal.SIGTERM, stop)
time.sleep(float(os.environ.get("START_DELAY_S", "0")))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's upstream connections use it
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between

    def do_GET(self):
        body = json.dumps({"release": RELEASE, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("0.0.0.0", PORT), Handler)
print(f"release {RELEASE} listening on {PORT}", flush=True)
server.serve_forever()
server.server_close()
print(f"release {RELEASE} stopped", flush=True)
"""


@dataclass(frozen=True)
class StandinImages:
    proxy: str
    service: str
    caddy_deb: str  # the Debian package file the binary came from, e.g. caddy_2.6.2-5_amd64.deb
    caddy_version: str  # `caddy version` as the binary prints it


def caddy_binary(cache_dir: Path = CACHE_DIR) -> tuple[Path, str]:
    """Debian's /usr/bin/caddy, from the cache (fetched with `apt-get download caddy` first when missing);
    returns the binary and the .deb it came from."""
    root = cache_dir / "caddy"
    with _locked(cache_dir):
        cached = sorted(root.glob("caddy_*/caddy"))
        if cached:
            return cached[-1], cached[-1].parent.name + ".deb"
        with tempfile.TemporaryDirectory(prefix="gdt-caddy-") as tmp:
            work = Path(tmp)
            # apt's sandbox user (_apt) cannot write into root's private temp dir: download as root
            fetched = subprocess.run(
                ["apt-get", "download", "-o", "APT::Sandbox::User=root", CADDY_PACKAGE],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            debs = sorted(work.glob(f"{CADDY_PACKAGE}_*.deb"))
            if fetched.returncode != 0 or not debs:
                raise SetupError(
                    f"apt-get download {CADDY_PACKAGE} failed ({fetched.returncode}): "
                    f"{fetched.stderr.strip()[-500:]} (run `apt-get update` first)"
                )
            tree = work / "tree"
            run_checked(["dpkg-deb", "-x", str(debs[0]), str(tree)])
            target = root / debs[0].stem
            partial = root / f".{debs[0].stem}.{os.getpid()}.partial"
            partial.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / "usr/bin/caddy", partial / "caddy")
            if target.exists():
                shutil.rmtree(target)
            partial.replace(target)
            return target / "caddy", debs[0].name


def _layer(files: dict[str, tuple[bytes | None, int, bytes | None]]) -> bytes:
    """A tar of {path: (content or None for a directory, mode, security.capability xattr or None)},
    owned by root; the xattr travels as a PAX SCHILY.xattr record, which `docker cp` applies (a
    `docker build` COPY here drops it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, (content, mode, capability) in files.items():
            info = tarfile.TarInfo(path)
            info.mode = mode
            if content is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(content)
            if capability is not None:
                info.pax_headers = {"SCHILY.xattr.security.capability": capability.decode("latin-1")}
            archive.addfile(info, None if content is None else io.BytesIO(content))
    return buffer.getvalue()


def _image(engine: Engine, base: str, layer: bytes, tag: str, cmd: list[str]) -> None:
    """`base` plus the files of `layer` (docker create, docker cp - to /, docker commit), CMD `cmd`."""
    container = engine.docker_cli("create", base).stdout.strip()
    try:
        copied = subprocess.run(
            [engine.cli, "cp", "-", f"{container}:/"],
            input=layer,
            env=engine.env(),
            capture_output=True,
            timeout=300,
            check=False,
        )
        if copied.returncode != 0:
            raise SetupError(f"docker cp into {tag}: {copied.stderr.decode(errors='replace').strip()}")
        engine.docker_cli("commit", "--change", f"CMD {json.dumps(cmd)}", container, tag)
    finally:
        engine.docker_cli("rm", "-f", container, check=False)


def build_standin_images(engine: Engine, base: BaseImages) -> StandinImages:
    """Both stand-in images in `engine`."""
    binary, deb = caddy_binary()
    # the official image's layout: /usr/bin/caddy with `setcap cap_net_bind_service=+ep`, /etc/caddy
    # for the main Caddyfile, /config and /data
    layer = _layer(
        {
            "etc/caddy": (None, 0o755, None),
            "config/caddy": (None, 0o755, None),
            "data/caddy": (None, 0o755, None),
            "usr/bin/caddy": (binary.read_bytes(), 0o755, NET_BIND_SERVICE_EP),
        }
    )
    _image(
        engine,
        base.bash,
        layer,
        PROXY_IMAGE,
        ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"],
    )
    version = engine.docker_cli("run", "--rm", PROXY_IMAGE, "caddy", "version").stdout.strip()
    # as in the official image, the file capability cannot be granted without capabilities: exec fails
    capless = engine.docker_cli(
        "run", "--rm", "--user", "65534:65534", "--cap-drop", "ALL", PROXY_IMAGE, "caddy", "version", check=False
    )  # fmt: skip
    if "operation not permitted" not in capless.stderr:
        raise SetupError(
            f"{PROXY_IMAGE}: /usr/bin/caddy without capabilities should fail as the official image's "
            f"does (its file capability), got exit {capless.returncode}: {capless.stderr.strip()}"
        )

    service = _layer({"srv/standin.py": (SERVICE_SCRIPT.encode(), 0o644, None)})
    _image(engine, base.python3, service, SERVICE_IMAGE, ["python3", "/srv/standin.py"])
    return StandinImages(proxy=PROXY_IMAGE, service=SERVICE_IMAGE, caddy_deb=deb, caddy_version=version)
