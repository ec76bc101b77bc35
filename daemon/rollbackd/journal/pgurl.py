"""``[journal] url``, read without a driver: checked, and shown without its password.

What the config validates and what every message shows of a ``postgresql://`` URL,
without importing psycopg (a single machine's SQLite journal never loads it): the
scheme, where it points (``host:port/db``), and the password, only ever to mask or
scrub it. libpq reads the URL itself when connecting, and says what else is wrong.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("postgresql", "postgres")


def check_url(url: str) -> str:
    """``url`` if it is a ``postgresql://`` URL; ValueError (password masked) if not."""
    if urlsplit(url).scheme not in SCHEMES:
        raise ValueError(f"expected a postgresql://USER@HOST:PORT/DB URL, got {masked_url(url)!r}")
    return url


def _parts(url: str) -> tuple[str, str | None, str, str, dict[str, str]]:
    """(user, password, hosts, database, query) as libpq reads them (percent-decoded)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return (
        unquote(query.get("user", user)),
        query.get("password", unquote(password) if colon else None),
        unquote(query.get("host", hosts)),
        unquote(query.get("dbname", parts.path.lstrip("/"))),
        query,
    )


def password_of(url: str) -> str | None:
    """The password the URL holds, if any (only ever to mask or scrub it)."""
    return _parts(url)[1] or None


def masked_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``."""
    if password_of(url) is None:
        return url
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    netloc = f"{user}:***@{hosts}" if colon else parts.netloc
    query = parts.query
    if "password=" in query:
        query = "&".join(
            "password=***" if item.startswith("password=") else item for item in query.split("&")
        )
    return parts._replace(netloc=netloc if at else parts.netloc, query=query).geturl()


def place(url: str) -> str:
    """``host:port/db`` (libpq's defaults for what the URL leaves out)."""
    user, _, hosts, database, query = _parts(url)
    host = hosts or "localhost"
    if host.startswith("/"):
        host = f"[{host}]"  # a unix socket directory
    elif "port" in query and ":" not in host:
        host = f"{host}:{query['port']}"
    elif ":" not in host.rpartition("]")[2]:
        host = f"{host}:5432"
    return f"{host}/{database or user}"


def shown_url(url: str) -> str:
    """``postgresql://user@host:port/db``: where the journal is, for people and logs."""
    user = _parts(url)[0]
    return f"postgresql://{user + '@' if user else ''}{place(url)}"


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` without any of ``secrets`` in it (a libpq message quoting a URL, say)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
