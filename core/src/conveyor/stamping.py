"""Canvas stamping: labels put on every task of a workflow, read by the worker.

``sig.stamp(tenant="acme")`` (or a :class:`StampingVisitor` that decides each task's
stamps as it walks a chain, group or chord) adds the stamps to the signatures'
options, Celery's layout: each stamp is an option of its name, listed in the
``stamped_headers`` option. The message then carries them in its ``stamped_headers``
and ``stamps`` headers, which a Celery 5.3+ worker reads as ``self.request.stamps``,
and so does a Conveyor worker; a task's retries keep them.

Rules (Celery's, where its own are consistent): a stamp given again replaces the
old value, or with ``append_stamps=True`` the two values are kept as a list (old
first); a visitor's stamp replaces a keyword stamp of the same name; the callbacks
and errbacks of a signature get the stamps given to it (and what the visitor's
``on_callback``/``on_errback`` add), not the signature's own earlier ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .options import stamp_names


class StampingVisitor:
    """Decides the stamps of each signature a ``stamp()`` call walks.

    Override the methods you need; each gets the stamps given so far as keywords
    and returns the stamps to add (a dict, maybe empty). ``on_signature`` is called
    for every task signature; the ``…_start`` ones for a group, chain or chord
    before its members (what they return is given to the members too), the
    ``…_end`` ones after them.
    """

    def on_signature(self, sig: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for one task's signature."""
        return {}

    def on_group_start(self, group: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for a group and every member."""
        return {}

    def on_group_end(self, group: Any, **stamps: Any) -> None:
        """Called after a group's members were stamped."""

    def on_chain_start(self, chain: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for a chain and every step."""
        return {}

    def on_chain_end(self, chain: Any, **stamps: Any) -> None:
        """Called after a chain's steps were stamped."""

    def on_chord_header_start(self, chord: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for every task of a chord's header."""
        return {}

    def on_chord_header_end(self, chord: Any, **stamps: Any) -> None:
        """Called after a chord's header was stamped."""

    def on_chord_body(self, chord: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for a chord's body."""
        return {}

    def on_callback(self, callback: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for a signature's ``link`` callback."""
        return {}

    def on_errback(self, errback: Any, **stamps: Any) -> dict[str, Any]:
        """Stamps for a signature's ``link_error`` errback."""
        return {}


def merged(stamps: Mapping[str, Any], more: Mapping[str, Any] | None) -> dict[str, Any]:
    """``stamps`` with ``more`` (a visitor's answer) over them."""
    if more is not None and not isinstance(more, Mapping):
        raise TypeError(f"A stamping visitor must return a dict of stamps, not {more!r}.")
    return {**stamps, **(more or {})}


def put(options: dict[str, Any], stamps: Mapping[str, Any], append: bool) -> None:
    """Stamp ``options`` (a signature's) in place: each stamp becomes the option of
    its name and is listed in ``stamped_headers``."""
    if not stamps:
        return
    names = stamp_names({"stamped_headers": list(stamps)})  # checks the new names
    had = stamp_names(options)
    for name in names:
        value = stamps[name]
        if append and name in had:
            old, new = options.get(name), value
            value = [*(old if isinstance(old, list) else [old]),
                     *(new if isinstance(new, list) else [new])]
        options[name] = value
    options["stamped_headers"] = list(dict.fromkeys([*had, *names]))
