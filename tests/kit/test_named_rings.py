"""The kit's view of a driver with several rings per queue (`ring_ref_keys` with
`request_codecs`, as netif): which ring each hostile mode is played on, and why a check does
not apply.  Negative controls: a single-ring driver keeps one ring, and a netif-like driver
without `request_codecs` has no layout to attack (the ring checks then say why they skip)."""

from __future__ import annotations

from typing import ClassVar

from ringkit.backends.net import NetBackend
from ringkit.frontends.net import NetFrontend

from ringkit.proto import netif
from ringkit.requests.codec import SlotCodec
from ringkit.testing._hostile import BACKEND_MODES, FRONTEND_MODES, rings_of, split_mode
from ringkit.testing.conformance import CHECKS, attacked_rings, checks_for, not_applicable

from .drivers_under_test import echo_driver, net_driver


class Codecless(NetFrontend):
    """A netif-like frontend that names its rings but gives no codec per ring."""

    request_codecs: ClassVar[tuple[SlotCodec, ...]] = ()


def test_netif_rings_are_named_with_their_codecs() -> None:
    specs = rings_of(NetBackend)
    assert [s.key for s in specs] == ["tx-ring-ref", "rx-ring-ref"]
    assert [s.codec for s in specs] == [netif.TX_CODEC, netif.RX_CODEC]
    assert [s.layout for s in specs] == [netif.TX_RING, netif.RX_RING]
    assert split_mode("req-prod-ahead@1") == ("req-prod-ahead", 1)
    assert split_mode("vanishes") == ("vanishes", 0)


def test_ring_attacks_are_played_on_each_ring_of_netif() -> None:
    net = net_driver()
    # a hostile backend attacks each of the frontend's rings in turn
    for name in ("rsp-prod-ahead", "garbage-responses", "answers-twice"):
        assert [i for i, _ in attacked_rings("backend", BACKEND_MODES[name], net)] == [0, 1]
    # a hostile frontend: the posted rx ring only where the backend need not answer
    assert [i for i, _ in attacked_rings("frontend", FRONTEND_MODES["ring-ref-stale"],
                                          net)] == [0, 1]
    assert [i for i, _ in attacked_rings("frontend", FRONTEND_MODES["req-prod-ahead"],
                                          net)] == [0]
    assert [i for i, _ in attacked_rings("frontend", FRONTEND_MODES["refs-never-granted"],
                                          net)] == [0]
    # not per ring: once
    assert attacked_rings("frontend", FRONTEND_MODES["vanishes"], net) == [
        (0, rings_of(NetBackend)[0])]
    # negative control: a single-ring driver is attacked on its one ring-ref
    echo = echo_driver()
    assert [s.key for _, s in attacked_rings("frontend", FRONTEND_MODES["req-prod-ahead"],
                                              echo)] == ["ring-ref"]


def test_every_check_but_two_applies_to_netif_and_the_others_say_why() -> None:
    net = net_driver()
    runs = checks_for(net, "sim")
    assert "hostile-frontend/req-prod-ahead" in runs
    assert "hostile-backend/answers-cancelled" in runs
    skipped = {name: not_applicable(name, net, "sim") for name in
               ("hostile-frontend/ref-count-too-big", "hostile-frontend/ring-page-order-too-big")}
    assert all(skipped.values()), skipped
    assert "ring_ref_keys" in skipped["hostile-frontend/ring-page-order-too-big"]
    # every other check runs: nothing is left out without a reason
    assert {n for n in CHECKS if not_applicable(n, net, "sim")} == set(skipped)
    assert set(runs) | set(skipped) == set(CHECKS)


def test_negative_control_netif_without_codecs_has_no_ring_to_attack() -> None:
    specs = rings_of(Codecless)
    assert [s.key for s in specs] == ["tx-ring-ref", "rx-ring-ref"]
    assert all(s.layout is None and s.codec is None for s in specs)
    driver = net_driver()
    bare = type(driver)(NetBackend, Codecless, driver.exchange, name="bare")
    why = not_applicable("hostile-frontend/req-prod-ahead", bare, "sim")
    assert "request_codecs" in why, why
    assert "hostile-frontend/req-prod-ahead" not in checks_for(bare, "sim")
