"""`cotrain up --ssl-certfile F --ssl-keyfile F` (issue 14, TLS): a real server with the web UI, on a
self-signed certificate made here with openssl, answers HTTPS and WSS, tells browsers to stay on HTTPS
(HSTS), marks its cookies Secure, says https in its start-up line, and refuses plain HTTP. Bad
certificate options are one sentence before the server starts."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import missing_service, terminate
from tests.server.conftest import ADMIN_TOKEN, free_port, reference_session, wait_until

COTRAIN = str(Path(sys.executable).with_name("cotrain"))


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path


@dataclass(frozen=True)
class HttpsServer:
    port: int
    cert: Path
    stdout: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.cert)), timeout=30,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("DATABASE_URL", "REDIS_URL", "COTRAIN_PUBLIC_ORIGIN", "COTRAIN_HTTPS"):
        env.pop(key, None)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
               COTRAIN_EMBEDDED_WORKER="0", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               COTRAIN_RATE_LIMIT_NAMESPACE="test-" + uuid.uuid4().hex[:12])
    return env


def _self_signed(folder: Path, name: str = "server") -> Tls:
    if shutil.which("openssl") is None:
        missing_service("openssl is not installed; install it to run the TLS tests")
    tls = Tls(folder / f"{name}-cert.pem", folder / f"{name}-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-keyout", str(tls.key), "-out", str(tls.cert),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return tls


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    """One `cotrain up` (web UI included, for its session cookie) serving HTTPS for the whole module."""
    folder = tmp_path_factory.mktemp("tls")
    tls = _self_signed(folder)
    served = HttpsServer(free_port(), tls.cert, folder / "stdout.txt")
    with served.stdout.open("wb") as out:
        proc = subprocess.Popen([COTRAIN, "up", "--port", str(served.port), "--ssl-certfile", str(tls.cert),
                                 "--ssl-keyfile", str(tls.key)], env=_env(folder / "home"), stdout=out,
                                stderr=subprocess.STDOUT)
    check = ssl.create_default_context(cafile=str(tls.cert))

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"cotrain up exited with {proc.returncode}: {served.stdout.read_text()[-3000:]}")
        try:
            return httpx.get(served.url + "/health", verify=check, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 90, "cotrain up over HTTPS")
        yield served
    finally:
        terminate(proc)


def test_https_answers_with_hsts_and_the_start_up_line_says_https(server: HttpsServer) -> None:
    with server.client() as client:
        health = client.get("/health")
    assert health.status_code == 200 and health.json()
    assert health.headers["strict-transport-security"] == "max-age=31536000"
    assert f"CoTrain server on https://127.0.0.1:{server.port}" in server.stdout.read_text()


def test_a_session_created_over_https_is_streamed_over_wss(server: HttpsServer) -> None:
    with server.client() as client:
        created = client.post("/api/v1/sessions", json=reference_session(name="over tls"))
        assert created.status_code == 201, created.text
        assert created.headers["strict-transport-security"] == "max-age=31536000"
    session_id = created.json()["id"]
    trust = ssl.create_default_context(cafile=str(server.cert))
    with ws_connect(f"wss://127.0.0.1:{server.port}/ws?token={ADMIN_TOKEN}", ssl=trust, open_timeout=10) as ws:
        ws.send(json.dumps({"action": "subscribe", "sessionId": session_id}))
        acknowledged = json.loads(ws.recv(timeout=10))
    assert acknowledged["event"] == "subscribed" and acknowledged["data"]["sessionId"] == session_id, acknowledged


def test_the_web_uis_session_cookie_is_secure(server: HttpsServer) -> None:
    with server.client() as client:
        page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200
    cookies = page.headers.get_list("set-cookie")
    assert cookies, "the web UI set no cookie"
    for cookie in cookies:
        attributes = [part.strip().lower() for part in cookie.split(";")[1:]]
        assert "secure" in attributes, cookie
    assert page.headers["strict-transport-security"] == "max-age=31536000"


def test_plain_http_on_the_tls_port_fails(server: HttpsServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
    with pytest.raises(httpx.ConnectError):  # nor is the certificate trusted without being given
        httpx.get(server.url + "/health", timeout=10)


@pytest.mark.parametrize("problem", ["missing", "only-cert", "wrong-key", "not-pem"])
def test_bad_certificate_options_are_one_sentence_before_the_start(tmp_path: Path, problem: str) -> None:
    tls = _self_signed(tmp_path)
    other = _self_signed(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    args, expected = {
        "missing": (["--ssl-certfile", str(tmp_path / "nope.pem"), "--ssl-keyfile", str(tls.key)], "no such file"),
        "only-cert": (["--ssl-certfile", str(tls.cert)], "go together"),
        "wrong-key": (["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(other.key)], "belongs to it"),
        "not-pem": (["--ssl-certfile", str(junk), "--ssl-keyfile", str(tls.key)], "PEM"),
    }[problem]
    done = subprocess.run([COTRAIN, "up", "--port", str(free_port()), *args], env=_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ssl-") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "CoTrain server on" not in done.stdout


# ---- behind a TLS-terminating proxy: the app sees plain HTTP, the operator says browsers see HTTPS ----

def _cookie_app(always: bool) -> object:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from cotrain.server.transport_security import TransportSecurityMiddleware

    def page(_request: object) -> PlainTextResponse:
        response = PlainTextResponse("ok")
        response.set_cookie("a", "1", httponly=True)
        response.set_cookie("b", "2", secure=True)
        return response

    return TransportSecurityMiddleware(Starlette(routes=[Route("/", page)]), always=always)


@pytest.mark.parametrize(("variable", "value", "https"), [
    ("COTRAIN_PUBLIC_ORIGIN", "https://cotrain.example", True),
    ("COTRAIN_PUBLIC_ORIGIN", "http://cotrain.example", False),
    ("COTRAIN_HTTPS", "1", True),
    ("COTRAIN_HTTPS", "0", False),
])
def test_behind_a_proxy_the_operator_turns_hsts_and_secure_cookies_on(
    cotrain_home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, https: bool,
) -> None:
    from starlette.testclient import TestClient

    from cotrain.server.settings import Settings
    from cotrain.server.transport_security import https_everywhere

    for name in ("COTRAIN_PUBLIC_ORIGIN", "COTRAIN_HTTPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert https_everywhere(Settings()) is https
    with TestClient(_cookie_app(https_everywhere(Settings())), base_url="http://proxied") as client:  # type: ignore[arg-type]
        response = client.get("/")
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2
    if https:
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert all(c.lower().count("secure") == 1 for c in cookies), cookies  # added once, never twice
    else:
        assert "strict-transport-security" not in response.headers
        assert [c.lower().count("secure") for c in cookies] == [0, 1]
