"""One redaction for every output: passwords in URLs, connection strings and records are masked,
however they are written; everything else is left as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from drctl.core.redact import MASK, is_secret_key, redact, redact_text
from drctl.model.integrity import PostgresSite, inline_password, parse_conninfo

PW = "S3cr3tPW1"


@pytest.mark.parametrize(("text", "expected"), [
    # URL userinfo: the user is kept, the password masked
    ("http://druser:S3cr3tPW1@127.0.0.1:8080/health", "http://druser:***@127.0.0.1:8080/health"),
    ("GET https://u:S3cr3tPW1@example.test/x: status 200", "GET https://u:***@example.test/x: status 200"),
    ("http://u:S3cr3tPW1@h", "http://u:***@h"),
    ("postgresql://:S3cr3tPW1@db/app", "postgresql://:***@db/app"),
    ("http://u:S3c@r3tPW1@h/x", "http://u:***@h/x"),  # an unencoded @ in the password: the last @ counts
    ("http://u:S3cr3t%40PW1@h/x", "http://u:***@h/x"),
    ("see <http://u:S3cr3tPW1@h/>.", "see <http://u:***@h/>."),
    ('{"url": "http://u:S3cr3tPW1@h/health"}', '{"url": "http://u:***@h/health"}'),
    ("`redis://:S3cr3tPW1@cache:6379/0`", "`redis://:***@cache:6379/0`"),
    # HTML-escaped password characters do not end the userinfo early
    ('<a href="http://u:S3cr&#x27;t&amp;PW1@h/">', '<a href="http://u:***@h/">'),
    # URI query parameters, percent-encoded keys included
    ("postgresql://u@h/db?password=S3cr3tPW1&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://h/db?sslmode=require&pass%77ord=S3cr3tPW1", "postgresql://h/db?sslmode=require&pass%77ord=***"),
    ("https://api.test/v1?api_key=S3cr3tPW1#frag", "https://api.test/v1?api_key=***#frag"),
    ("https://h/x?a=1&amp;token=S3cr3tPW1&amp;b=2", "https://h/x?a=1&amp;token=***&amp;b=2"),
    ("postgresql://u:S3cr3tPW1@h/db?password=S3cr3tPW1", "postgresql://u:***@h/db?password=***"),
    # libpq key=value, however written
    ("host=db password=S3cr3tPW1 user=app", "host=db password=*** user=app"),
    ("host=db password = S3cr3tPW1 dbname=x", "host=db password = *** dbname=x"),
    ("host=db password='S3cr 3t\\'PW1' dbname=x", "host=db password=*** dbname=x"),
    ("host=db pass%77ord=S3cr3tPW1", "host=db pass%77ord=***"),
    ("host=db PASSWORD=S3cr3tPW1", "host=db PASSWORD=***"),
    ("host=db passwd=S3cr3tPW1", "host=db passwd=***"),
    ("sslpassword=S3cr3tPW1 sslkey=/k", "sslpassword=*** sslkey=/k"),
    ("PGPASSWORD=S3cr3tPW1 psql -h db", "PGPASSWORD=*** psql -h db"),
    ("host=db password=S3c\\ r3tPW1 user=app", "host=db password=*** user=app"),
    # JSON / repr pairs, BIND key files, HTTP headers
    ('{"password": "S3cr3tPW1", "user": "app"}', '{"password": "***", "user": "app"}'),
    ("{'api_key': 'S3cr3tPW1'}", "{'api_key': '***'}"),
    ('key "k" { algorithm hmac-sha256; secret "S3cr3tPW1="; };', 'key "k" { algorithm hmac-sha256; secret "***"; };'),
    ("Authorization: Basic UzNjcjN0UFcx", "Authorization: Basic ***"),
    ("curl -H 'Authorization: Bearer S3cr3tPW1xyz'", "curl -H 'Authorization: Bearer ***'"),
])
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # redacting twice changes nothing more


@pytest.mark.parametrize("text", [
    "http://127.0.0.1:8080/health",
    "http://user@host/path",  # a user name alone is kept
    "postgresql://app@db:5432/app?sslmode=require",
    "host=db port=5432 user=app dbname=app passfile=/etc/drctl/pgpass",
    "password_file=/etc/pw password_env=PGPW",
    "GET http://h/x: status 200 in 3 ms (expected 200-399)",
    "a == b, x => y",
    "`conninfo` must not hold a password: use the environment",
    "authorization: denied by the server",
    "web@dc2 serves; mail admin@example.test",
    "tcp 127.0.0.1:22: connected in 1 ms",
    "",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_redact_walks_records() -> None:
    record: dict[str, Any] = {
        "event": "action_finished", "detail": f"GET http://u:{PW}@h/health: status 200",
        "data": {"password": PW, "token": PW, "api_key": PW, "Secret": PW, "passwd": PW,
                 "password_file": "/etc/pw", "password_env": "PGPW", "passfile": "/p", "empty_token": "",
                 "token_seen": True, "nested": [{"conninfo": f"host=db password={PW}"}, (f"x password={PW}",)]},
        f"http://u:{PW}@h": 1,
        "n": 3, "none": None,
    }
    out = redact(record)
    assert PW not in json.dumps(out, default=str)
    assert out["data"]["password"] == MASK and out["data"]["token"] == MASK and out["data"]["Secret"] == MASK
    assert out["data"]["password_file"] == "/etc/pw" and out["data"]["password_env"] == "PGPW"
    assert out["data"]["passfile"] == "/p" and out["data"]["empty_token"] == "" and out["data"]["token_seen"] is True
    assert out["data"]["nested"][0]["conninfo"] == "host=db password=***"
    assert isinstance(out["data"]["nested"][1], tuple)
    assert out["detail"] == "GET http://u:***@h/health: status 200"
    assert "http://u:***@h" in out and out["n"] == 3 and out["none"] is None
    assert record["data"]["password"] == PW  # a copy: the caller's record is not changed


@pytest.mark.parametrize(("key", "secret"), [
    ("password", True), ("PASSWORD", True), ("db-password", True), ("pass%77ord", True), ("pwd", True),
    ("api_key", True), ("apiKey", True), ("auth_token", True), ("client_secret", True), ("pass", True),
    ("password_file", False), ("password_env", False), ("passfile", False), ("secret_file", False),
    ("user", False), ("passive", False), ("detail", False), (3, False),
])
def test_secret_key_names(key: object, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_render_to_json_is_redacted() -> None:
    from drctl.core.render import to_json

    class Opaque:
        def __str__(self) -> str:
            return f"postgresql://u:{PW}@h/db"

    text = to_json({"password": PW, "url": f"http://u:{PW}@h", "obj": Opaque()})
    assert PW not in text
    assert json.loads(text)["url"] == "http://u:***@h"


# --- the conninfo check: parsed the way libpq parses it ------------------------------------------


@pytest.mark.parametrize("conninfo", [
    f"host=db password={PW}",
    f"host=db password = {PW}",
    f"host=db password='{PW} with spaces'",
    f"host=db password='it\\'s {PW}'",
    f"host=db pass%77ord={PW}",  # libpq would refuse the keyword; refused here as a password
    f"host=db PASSWORD={PW}",
    f"host=db sslpassword={PW}",
    f"postgresql://app:{PW}@db/app",
    f"postgres://app:{PW}@db:5432/app",
    f"postgresql://:{PW}@db/app",
    f"postgresql://app:{PW.replace('3', '%33')}@db/app",
    f"postgresql://db/app?password={PW}",
    f"postgresql://db/app?sslmode=require&pass%77ord={PW}",
    f"postgresql://db/app?%70assword={PW}",
    f"POSTGRESQL://app:{PW}@db/app",
    "postgresql://app:S3c/r3t@db/app",  # an unencoded / in the password: still a password
    f"dbname='host=db password={PW}'",  # libpq expands a dbname that is a connection string
    f"dbname=postgresql://app:{PW}@db/app",
])
def test_inline_passwords_are_refused_however_written(conninfo: str) -> None:
    assert inline_password(conninfo) is not None
    with pytest.raises(ValidationError) as err:
        PostgresSite.model_validate({"conninfo": conninfo})
    message = str(err.value)
    assert "must not hold a password" in message and "PGPASSWORD" in message and "pgpass" in message
    assert PW not in message and "S3c/r3t" not in message


@pytest.mark.parametrize("conninfo", [
    "", "dbname=app", "host=db2 dbname=app user=verify", "host=/run/postgresql port=5432 user=postgres dbname=postgres",
    "postgresql://app@db/app", "postgresql://db:5432/app?sslmode=require", "passfile=/etc/drctl/pgpass host=db",
    "host=db password=", "postgresql://app:@db/app", "service=prod",
])
def test_conninfo_without_a_password_is_accepted(conninfo: str) -> None:
    assert inline_password(conninfo) is None
    PostgresSite.model_validate({"conninfo": conninfo})


def test_conninfo_is_parsed_like_libpq() -> None:
    assert parse_conninfo("host=a  port = 5 application_name='it\\'s me' x=a\\ b") == [
        ("host", "a"), ("port", "5"), ("application_name", "it's me"), ("x", "a b")]
    assert parse_conninfo("postgresql://u:p%40w@h1:5,h2/db?sslmode=require&pass%77ord=x") == [
        ("user", "u"), ("password", "p@w"), ("host", "h1:5,h2"), ("dbname", "db"), ("sslmode", "require"),
        ("password", "x")]
    for bad, why in (("dbname", 'missing "="'), ("x='abc", "unterminated quoted"),
                     ("postgresql://h/d?a=b=c", "malformed parameter"), ("postgresql://h/d?a=%zz", "percent-encoded")):
        with pytest.raises(ValueError, match=why):
            parse_conninfo(bad)


def test_a_refused_conninfo_names_file_and_line_without_the_password(tmp_path: Any) -> None:
    from drctl.errors import ConfigError
    from drctl.model.load import load_inventory

    inv = tmp_path / "inventory.yaml"
    inv.write_text(f"""version: 1
sites:
  dc1: {{hosts: {{app1: {{address: 127.0.0.1}}}}}}
  dc2: {{hosts: {{app2: {{address: 127.0.0.1}}}}}}
services:
  db:
    primary: dc1
    backup: dc2
    integrity:
      - kind: postgres
        name: main
        sites:
          dc1: {{host: app1, conninfo: "dbname=app"}}
          dc2:
            host: app2
            conninfo: "postgresql://db/app?pass%77ord={PW}"
""")
    with pytest.raises(ConfigError) as err:
        load_inventory(inv)
    text = str(err.value)
    assert f"{inv}:16:" in text and "conninfo" in text and "must not hold a password" in text
    assert PW not in text
