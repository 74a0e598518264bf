#!/usr/bin/env python3
"""Screenshot of a node's /dashboard through headless Chromium's DevTools
protocol, signed in with the admin token: `cdp_shot.py DEVTOOLS_PORT
DASHBOARD_URL TOKEN OUT.png [WAIT_S]`.

Standard library only (a minimal WebSocket client: text frames out, masked;
text frames in, any length), so the scripts need nothing from PyPI.
"""
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request


class DevTools:
    def __init__(self, ws_url):
        rest = ws_url[len("ws://"):]
        hostport, path = rest.split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError("DevTools closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"no WebSocket upgrade: {head!r}")
        self.next_id = 0

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            buf += chunk
        return buf

    def _send(self, text):
        data = text.encode()
        head = bytearray([0x81])
        if len(data) < 126:
            head.append(0x80 | len(data))
        elif len(data) < 1 << 16:
            head.append(0x80 | 126)
            head += struct.pack(">H", len(data))
        else:
            head.append(0x80 | 127)
            head += struct.pack(">Q", len(data))
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes(head) + mask + body)

    def _recv(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            message += payload
            if b0 & 0x80:
                return json.loads(message)

    def call(self, method, params=None):
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})


def main():
    port, url, token, out = sys.argv[1:5]
    wait_s = float(sys.argv[5]) if len(sys.argv) > 5 else 6
    deadline = time.time() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            if pages:
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("Chromium's DevTools did not answer")
        time.sleep(0.2)
    tools = DevTools(pages[0]["webSocketDebuggerUrl"])
    tools.call("Emulation.setDeviceMetricsOverride",
               {"width": 1280, "height": 1100, "deviceScaleFactor": 1, "mobile": False})
    tools.call("Page.enable")
    tools.call("Page.navigate", {"url": url})
    time.sleep(1.5)
    # The page keeps the token in sessionStorage, as its sign-in form does.
    tools.call("Runtime.evaluate", {
        "expression": f"sessionStorage.setItem('seckill-admin-token', {json.dumps(token)}); location.reload()"
    })
    time.sleep(wait_s)
    shot = tools.call("Page.captureScreenshot", {"format": "png"})
    with open(out, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    print(out)


if __name__ == "__main__":
    main()
