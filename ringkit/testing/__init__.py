"""Public test helpers: conformance checks of the transport interface, and the test kit for
driver authors (worlds to run a device in, driver descriptions, the driver conformance suite in
`ringkit.testing.conformance`, the pytest plugin in `ringkit.testing.pytest_plugin`; the guide
is docs/testing.md).

The checks take a *pair maker* (a callable returning an async context manager that yields two
`ringkit.abc.Domain` handles) and never import pytest, so any transport -- the simulator, the
real ``/dev/xen`` devices, your own -- can be held to the same contract::

    from ringkit.testing import TRANSPORT_CHECKS, check_refusals

    for name, check in TRANSPORT_CHECKS.items():
        await check(make_pair)
    await check_refusals(make_pair, grant_limit=1024)

Every check ends by asserting that both handles' `leaks()` are all zero.
"""

from ._driver import DriverUnderTest as DriverUnderTest
from ._driver import Exchange as Exchange
from ._pair import DevicePair as DevicePair
from ._pair import open_device_pair as open_device_pair
from ._transport import TRANSPORT_CHECKS as TRANSPORT_CHECKS
from ._transport import PairMaker as PairMaker
from ._transport import assert_no_leaks as assert_no_leaks
from ._transport import check_bind_pending as check_bind_pending
from ._transport import check_close_while_buffer_exported as check_close_while_buffer_exported
from ._transport import check_event_channel as check_event_channel
from ._transport import check_grant_limit as check_grant_limit
from ._transport import check_multi_page_contiguous as check_multi_page_contiguous
from ._transport import check_peer_gone as check_peer_gone
from ._transport import check_read_only_grant as check_read_only_grant
from ._transport import check_rebind_after_peer_close as check_rebind_after_peer_close
from ._transport import check_refusals as check_refusals
from ._transport import check_share_map_round_trip as check_share_map_round_trip
from ._transport import check_unmap_notify as check_unmap_notify
from ._world import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._world import WaitTimeout as WaitTimeout
from ._world import World as World
from ._world import check_leaks as check_leaks
from ._world import check_sim_leaks as check_sim_leaks
from ._world import sim_world as sim_world
from ._world import within as within
from ._world import xen_available as xen_available
from ._world import xen_world as xen_world

__all__ = (
    "DEFAULT_TIMEOUT",
    "TRANSPORT_CHECKS",
    "DevicePair",
    "DriverUnderTest",
    "Exchange",
    "PairMaker",
    "WaitTimeout",
    "World",
    "assert_no_leaks",
    "check_bind_pending",
    "check_close_while_buffer_exported",
    "check_event_channel",
    "check_grant_limit",
    "check_leaks",
    "check_multi_page_contiguous",
    "check_peer_gone",
    "check_read_only_grant",
    "check_rebind_after_peer_close",
    "check_refusals",
    "check_share_map_round_trip",
    "check_sim_leaks",
    "check_unmap_notify",
    "open_device_pair",
    "sim_world",
    "within",
    "xen_available",
    "xen_world",
)
