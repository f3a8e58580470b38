"""Public helpers for the core and for plugins: "did you mean …" for misspelt names, and
URL masking for anything printed or logged (plugins import these from here)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A sentence fragment suggesting the closest candidate, or ''."""
    match = closest(name, candidates)
    return f" Did you mean {match!r}?" if match else ""


#: ``scheme://user:PASSWORD@``: the password runs to the last ``@`` before white space
#: or a quote, so one holding ``@`` or ``/`` unencoded is masked whole.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)[^\s'\"]*@")
#: ``?password=…`` / ``&token=…`` style query parameters (redis-py, SQLAlchemy, AMQP).
_QUERY = re.compile(r"(?i)(?P<head>[?&;](?:password|passwd|pass|pwd|secret|token|"
                    r"auth|api_?key|access_?key|secret_?key)=)"
                    # up to the next parameter, or to punctuation that ends a sentence
                    r"[^&#;\s'\"]*?(?=[:,.)]*(?:[&#;\s'\"]|$))")
#: Setting and option names whose values are secrets whatever they look like.
_SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|api_?key")


def mask_url(url: str | None) -> str:
    """``url`` with its password replaced by ``**``, safe to print or log.

    Masks a password in the user info (``redis://:pw@host``, ``amqp://u:pw@host``) and
    in the query (``redis://host/0?password=pw``); works on any text, so a message
    that quotes URLs can be passed whole.
    """
    if not url:
        return str(url)
    text = _USERINFO.sub(lambda m: f"{m.group('head')}**@", url)
    return _QUERY.sub(lambda m: f"{m.group('head')}**", text)


def mask_secrets(value: Any, name: str = "") -> Any:
    """A copy of a setting's ``value`` safe to print: URLs masked, and values under a
    name that says password, secret or token (at any depth) replaced by ``**``."""
    if name and _SECRET_NAME.search(name) and value:
        return "**"
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v) for v in value)
    return value
