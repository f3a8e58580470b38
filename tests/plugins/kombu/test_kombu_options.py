"""What a user gets for a bad bridge URL or a ``broker_transport_options`` key kombu's
transport does not read (kombu itself would ignore it silently)."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError, UnknownOptionError


def test_misspelt_option_names_the_closest_key_kombu_reads() -> None:
    app = Conveyor("k", broker="kombu+redis://127.0.0.1:1/0", backend="memory://k",
                   broker_transport_options={"visiblity_timeout": 5})
    with pytest.raises(UnknownOptionError, match=r"'visiblity_timeout'.*'redis'.*"
                                                 r"Did you mean 'visibility_timeout'"):
        app.transport_factory()


def test_an_option_of_another_kombu_transport_is_refused() -> None:
    """``visibility_timeout`` means something to kombu's Redis, nothing to its
    filesystem transport; the folders mean something there."""
    app = Conveyor("k", broker="kombu+filesystem://", backend="memory://k",
                   broker_transport_options={"visibility_timeout": 5})
    with pytest.raises(UnknownOptionError, match="'filesystem' transport"):
        app.transport_factory()
    ok = Conveyor("k", broker="kombu+filesystem://", backend="memory://k",
                  broker_transport_options={"data_folder_in": "/tmp", "polling_interval": 1,
                                            "delayed_delivery": "worker"})
    assert ok.transport_factory().options == {"data_folder_in": "/tmp",
                                              "polling_interval": 1}


def test_a_url_without_a_kombu_transport_is_a_clear_error() -> None:
    app = Conveyor("k", broker="kombu+redix://x", backend="memory://k")
    with pytest.raises(ConfigurationError, match="no transport 'redix'.*Did you mean"):
        app.transport_factory()
    from conveyor_kombu.transport import kombu_url
    with pytest.raises(ConfigurationError, match="kombu\\+redis://"):
        kombu_url("redis://127.0.0.1/0")
