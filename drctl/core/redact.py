"""Secrets never leave their source: the one redaction every output path applies.

``redact_text(text)`` masks, wherever they appear in a string:

- the password of a URL's userinfo: ``scheme://user:pw@host`` -> ``scheme://user:***@host``
  (the user name is kept; a userinfo without ``:`` is only a user name and is kept as is). The
  userinfo ends at the authority's last ``@``, the way ``urllib`` and the health check read it,
  so a password holding an unencoded ``@`` is masked whole;
- password-like query parameters of a URI (``?password=x``, ``&pass%77ord=x``: keys are
  percent-decoded, as libpq does for URIs);
- password-like keys of a libpq ``key=value`` conninfo however written: spaces around ``=``,
  single-quoted values with backslash escapes (``password='a \\' b'``), percent-encoded keys;
- ``"password": "x"`` pairs of JSON or Python reprs, ``secret "..."`` lines of BIND key files,
  ``Authorization:`` headers and ``Bearer`` tokens.

``redact(obj)`` walks dicts, lists and tuples (journal records, JSON documents): values of keys
named like a secret (``password``, ``passwd``, ``secret``, ``token``, ``api_key``... but not
``password_file`` / ``password_env`` / ``passfile``, which only say where a secret is) become
``***``; every string is passed through ``redact_text``.

Pure: standard library only, no I/O. Redacting twice gives the same text as redacting once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"

#: a key holding one of these (after percent-decoding, lower case, ``-`` read as ``_``) is a secret
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "token", "api_key", "apikey", "private_key",
                 "access_key", "credential")
#: short names that are secrets only on their own (``pass`` but not ``passive``)
_SECRET_EXACT = frozenset({"pass", "pwd", "pw", "auth"})
#: keys that say *where* a secret is (a file, an environment variable), not what it is
_REFERENCE_SUFFIXES = ("_file", "_env", "_path", "_ref", "file", "_name")

_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>(?:&\#\w+;|[^\s/?#<>])*)")
_QUERY = re.compile(r"(?P<pre>&amp;|[?&])(?P<key>[A-Za-z0-9_.%+-]+)=(?P<value>[^&#\s\"'<>`]*)")
_KEY_VALUE = re.compile(
    r"(?<![\w%.-])(?P<key>[A-Za-z_%][\w%.-]*)(?P<eq>[ \t]*=[ \t]*)(?![=>])"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|(?:\\.|[^\s\\\"<`'])(?:\\.|[^\s\\\"<`])*)")
_QUOTED_PAIR = re.compile(r"(?P<q>[\"'])(?P<key>[^\"'\\\s]{1,64})(?P=q)(?P<sep>\s*:\s*)"
                          r"(?P<vq>[\"'])(?P<value>(?:[^\\\n]|\\.)*?)(?P=vq)")
_BIND_SECRET = re.compile(r"(?P<pre>\bsecret\s+)\"[^\"]*\"")
_AUTH_HEADER = re.compile(r"(?P<pre>\b(?:Proxy-)?Authorization:[ \t]*)"
                          r"(?P<scheme>Basic|Bearer|Digest|Token|Negotiate)[ \t]+[^\s'\"]+", re.I)
_BEARER = re.compile(r"(?P<pre>\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def is_secret_key(key: object) -> bool:
    """Whether a dict key or conninfo/query parameter name names a secret value."""
    if not isinstance(key, str) or not key:
        return False
    k = unquote(key).strip().lower().replace("-", "_")
    if k.endswith(_REFERENCE_SUFFIXES):
        return False
    return k in _SECRET_EXACT or any(part in k for part in _SECRET_PARTS)


def _mask_authority(m: re.Match[str]) -> str:
    authority = m.group("authority")
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return m.group(0)
    user, _, password = userinfo.partition(":")
    if password == MASK:
        return m.group(0)
    return f"{m.group('scheme')}{user}:{MASK}@{hostport}"


def _mask_query(m: re.Match[str]) -> str:
    if not is_secret_key(m.group("key")) or m.group("value") == MASK:
        return m.group(0)
    return f"{m.group('pre')}{m.group('key')}={MASK}"


def _mask_key_value(m: re.Match[str]) -> str:
    value = m.group("value")
    if not is_secret_key(m.group("key")) or value.startswith(MASK) or value.startswith(f"'{MASK}"):
        return m.group(0)
    return f"{m.group('key')}{m.group('eq')}{MASK}"


def _mask_quoted_pair(m: re.Match[str]) -> str:
    if not is_secret_key(m.group("key")) or m.group("value") == MASK:
        return m.group(0)
    return f"{m.group('q')}{m.group('key')}{m.group('q')}{m.group('sep')}{m.group('vq')}{MASK}{m.group('vq')}"


def _mask_auth_header(m: re.Match[str]) -> str:
    if m.group(0).endswith(MASK):
        return m.group(0)
    return f"{m.group('pre')}{m.group('scheme')} {MASK}"


def redact_text(text: str) -> str:
    """``text`` with every secret it shows masked (see the module docstring)."""
    if not text or not isinstance(text, str):
        return text
    out = _URL.sub(_mask_authority, text)
    if "=" in out:
        out = _QUERY.sub(_mask_query, out)
        out = _KEY_VALUE.sub(_mask_key_value, out)
    if ":" in out:
        out = _QUOTED_PAIR.sub(_mask_quoted_pair, out)
        out = _AUTH_HEADER.sub(_mask_auth_header, out)
    if "secret" in out:
        out = _BIND_SECRET.sub(lambda m: f'{m.group("pre")}"{MASK}"', out)
    if "Bearer" in out:
        out = _BEARER.sub(lambda m: f"{m.group('pre')}{MASK}", out)
    return out


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, strings; anything else as is) with its secrets masked."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            key = redact_text(k) if isinstance(k, str) else k
            if is_secret_key(k) and v is not None and not isinstance(v, bool) and v != "":
                out[key] = MASK
            else:
                out[key] = redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    return obj
