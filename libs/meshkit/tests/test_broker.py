"""The first connection to a broker that is not reachable yet: retried in the background,
logged once per outage, and given up at once when the broker is closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from meshdev.customers import eventually
from meshdev.faults import TcpProxy
from meshdev.rabbitmq import BROKER_URL, amqp_url, create_vhost, delete_vhost
from meshkit.messaging import Broker
from meshkit.messaging.broker import BrokerUnavailableError

LOGGER = "meshkit.messaging.broker"


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    name = await create_vhost("meshkit_broker_test")
    yield name
    await delete_vhost(name)


@pytest.fixture
async def cut_link() -> AsyncIterator[TcpProxy]:
    address = urlsplit(BROKER_URL)
    link = await TcpProxy(address.hostname or "127.0.0.1", address.port or 5672).start()
    await link.cut()
    yield link
    await link.close()


def _unreachable(caplog: pytest.LogCaptureFixture, level: int) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and r.getMessage().startswith("broker not")
    )


async def test_a_broker_unreachable_at_start_is_connected_once_back_with_one_warning(
    vhost: str, cut_link: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(amqp_url(vhost, port=cut_link.port), connection_name="broker-test")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        broker.start()
        try:

            async def retried() -> bool:
                return _unreachable(caplog, logging.DEBUG) >= 2

            await eventually(retried)
            assert not broker.is_connected
            await cut_link.restore()
            async with asyncio.timeout(30):
                assert await broker.wait_connected()
        finally:
            await broker.close()

    assert _unreachable(caplog, logging.WARNING) == 1
    back = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("broker not reachable; back after") for m in back)


async def test_closing_a_broker_that_is_not_reachable_ends_its_retries_at_once(
    vhost: str, cut_link: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(amqp_url(vhost, port=cut_link.port), connection_name="broker-test")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        broker.start()

        async def failed_once() -> bool:
            return _unreachable(caplog, logging.WARNING) == 1

        await eventually(failed_once)
        async with asyncio.timeout(1):
            await broker.close()

    with pytest.raises(BrokerUnavailableError):
        await broker.wait_connected()
