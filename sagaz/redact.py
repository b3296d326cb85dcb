"""Keeping secrets out of messages and logs: URLs are shown without their passwords."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["redact_text", "redact_url"]

_SECRET_PARAMETERS = ("password", "passwd", "secret", "token", "sslpassword")
# In free text: the password of a URL's user info (scheme://user:PASSWORD@host) and secret
# key=value pairs (libpq DSNs, query strings), with or without quotes.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/]*@")
_SECRET_PAIR = re.compile(
    r"(\b(?:" + "|".join(_SECRET_PARAMETERS) + r")\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,]+)",
    re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and of secret query parameters (such as
    ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" (an IPv6 literal): nothing can be told apart
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://***" if sep and scheme.isascii() and scheme.isalnum() else "***"
    try:
        password = parts.password
    except ValueError:  # a malformed port makes urllib give up on the netloc: hide all of it
        return f"{parts.scheme}://***" if parts.scheme else "***"
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{hostinfo}")
    if parts.query:
        query = [(k, "***" if k.lower() in _SECRET_PARAMETERS else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


def redact_text(text: str) -> str:
    """``text`` (an error message, say) with every password it shows replaced by ``***``: in
    URLs (``scheme://user:***@host``) and in ``password=`` style pairs (libpq DSNs, queries)."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _SECRET_PAIR.sub(r"\1***", text)
