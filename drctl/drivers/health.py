"""Health checks of a site's service endpoint: HTTP(S) status and body, or a TCP connect.

``check_health`` tries up to ``retries`` times, ``interval`` apart, each try bounded by
``timeout``, and returns the first success or the last failure. It never raises for an unhealthy
target: the result says what was seen. Redirects are not followed (a 3xx is judged by
``expect_status``); proxies from the environment are not used; HTTPS certificates are verified.
Credentials in a URL are sent as basic auth and never shown in a detail: details show the URL
without its userinfo, and with password-like query parameters masked (``shown_url``). Standard
library only (and the pure ``drctl.core.redact``).
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from drctl.core.redact import redact_text
from drctl.model.inventory import HealthCheck

_BODY_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str
    elapsed_s: float


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _statuses(codes: list[int]) -> str:
    """[200, 201, ..., 399] -> "200-399"."""
    out: list[str] = []
    codes = sorted(set(codes))
    i = 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        out.append(str(codes[i]) if i == j else f"{codes[i]}-{codes[j]}")
        i = j + 1
    return ", ".join(out)


def shown_url(url: str) -> str:
    """``url`` as details and titles may show it: no userinfo (user names are often tokens too),
    secrets in the query masked."""
    parts = urlsplit(url)
    return redact_text(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())


def _http_once(hc: HealthCheck, url: str) -> tuple[bool, str]:
    parts = urlsplit(url)
    shown = shown_url(url)
    try:
        port = parts.port
    except ValueError:
        return False, f"GET {shown}: the port is not a number"
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"User-Agent": "drctl-health", "Connection": "close", "Accept": "*/*"}
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=hc.timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=hc.timeout)
    start = time.monotonic()
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(_BODY_LIMIT) if hc.expect_body is not None else b""
        status = resp.status
    except TimeoutError:
        return False, f"GET {shown}: no answer within {hc.timeout:g}s"
    except ConnectionRefusedError:
        return False, f"GET {shown}: connection refused"
    except ssl.SSLError as exc:
        return False, f"GET {shown}: TLS failed: {exc.reason or exc}"
    except OSError as exc:
        return False, f"GET {shown}: {exc.strerror or exc}"
    except http.client.HTTPException as exc:
        return False, f"GET {shown}: bad HTTP answer: {type(exc).__name__} {exc}".rstrip()
    finally:
        conn.close()
    took = time.monotonic() - start
    if status not in hc.expect_status:
        return False, f"GET {shown}: status {status} (expected {_statuses(hc.expect_status)}) in {_ms(took)}"
    if hc.expect_body is not None and hc.expect_body not in body.decode("utf-8", errors="replace"):
        return False, f"GET {shown}: status {status} but the body does not contain {hc.expect_body!r}"
    return True, f"GET {shown}: status {status} in {_ms(took)}"


def _tcp_once(hc: HealthCheck, target: str) -> tuple[bool, str]:
    m = re.match(r"^\[([0-9a-fA-F:]+)\]:(\d+)$", target) or re.match(r"^([^:\s]+):(\d+)$", target)
    if not m:
        return False, f"tcp {target}: not HOST:PORT"
    start = time.monotonic()
    try:
        with socket.create_connection((m.group(1), int(m.group(2))), timeout=hc.timeout):
            pass
    except TimeoutError:
        return False, f"tcp {target}: connect timed out after {hc.timeout:g}s"
    except ConnectionRefusedError:
        return False, f"tcp {target}: connection refused"
    except OSError as exc:
        return False, f"tcp {target}: {exc.strerror or exc}"
    return True, f"tcp {target}: connected in {_ms(time.monotonic() - start)}"


def check_health(hc: HealthCheck, *, cancel: threading.Event | None = None) -> HealthResult:
    """Probe ``hc`` (see the module docstring); ok=False with a detail when unhealthy. The pause
    between tries ends early when ``cancel`` is set (the run was interrupted)."""
    start = time.monotonic()
    detail = "no check defined"
    for attempt in range(1, hc.retries + 1):
        if hc.http is not None:
            ok, detail = _http_once(hc, hc.http)
        elif hc.tcp is not None:
            ok, detail = _tcp_once(hc, hc.tcp)
        else:
            ok = False
        detail = redact_text(detail)
        if ok:
            return HealthResult(True, detail, time.monotonic() - start)
        if attempt < hc.retries:
            if cancel is None:
                time.sleep(hc.interval)
            elif cancel.wait(hc.interval):
                break
    if hc.retries > 1:
        detail += f" ({hc.retries} tries, {hc.interval:g}s apart)"
    return HealthResult(False, detail, time.monotonic() - start)
