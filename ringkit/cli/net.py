"""``ringkit net``: serve a guest's network interface (netif) on a TAP device, or be the guest's
end with its frames on a TAP device of its own."""

from __future__ import annotations

import click

from ._common import DIR_HELP, open_cli_domain, run_command


@click.group()
def net() -> None:
    """Xen PV network interfaces (io/netif.h): a backend that bridges a guest's vif to a TAP
    device, and the guest's end with its frames on another TAP device.  Both need
    CAP_NET_ADMIN (/dev/net/tun); configure the TAP devices with `ip`.

    \b
    On a simulated Xen (tested on the sim only; real-Xen interop is not done yet):
      ringkit net serve --dir /tmp/xen --frontend 1 --tap vif1.0 &
      ringkit net attach --dir /tmp/xen --domain 1 --tap eth-guest &
      ip addr add 10.0.0.1/24 dev vif1.0; ip link set vif1.0 up
      ip addr add 10.0.0.2/24 dev eth-guest; ip link set eth-guest up
      (put each TAP in its own network namespace to route between them: docs/net.md)
    """


@net.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--frontend", "frontend_id", required=True, type=click.IntRange(0, 0x7FEF),
              help="Domid of the guest whose vif this is.")
@click.option("--domain", "domid", default=0, show_default=True,
              type=click.IntRange(0, 0x7FEF), help="Domid this backend runs in.")
@click.option("--devid", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="The vif's device id (vif<frontend>.<devid>).")
@click.option("--tap", "tap_name", required=True, help="TAP device to bridge to (created if "
                                                       "it does not exist).")
@click.option("--vnet-hdr/--no-vnet-hdr", default=True, show_default=True,
              help="Open the TAP with IFF_VNET_HDR (checksum offload from the host's stack), "
                   "and offer GSO (feature-gso-tcpv4/v6) to the guest.")
@click.option("--mac", default="00:16:3e:00:00:01", show_default=True,
              help="The guest's MAC, written to both ends' mac node when creating the device.")
@click.option("--max-queues", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Most queues (tx and rx ring pairs) to offer the guest (multi-queue; 1: none).")
@click.option("--once", is_flag=True, help="Exit after the first guest disconnects.")
@click.option("--no-create", is_flag=True,
              help="Do not create the device's xenstore entries (a toolstack already did).")
def serve(directory: str | None, frontend_id: int, domid: int, devid: int, tap_name: str,
          vnet_hdr: bool, mac: str, max_queues: int, once: bool, no_create: bool) -> None:
    """Bridge guest --frontend's vif to the TAP device --tap.

    Writes both ends' xenstore entries first (as `xl network-attach` would; skip with
    --no-create), prints "ready: ..." once it waits for the guest, then moves frames both ways
    until the device is removed (or, with --once, the guest leaves).
    """
    from ..backends.net import NetBackend
    from ..backends.net.tap import TapDevice
    from ..device import DeviceAddress, create_device
    from ..proto.netif import format_mac, parse_mac

    try:
        mac = format_mac(parse_mac(mac))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mac") from None

    async def main() -> None:
        async with open_cli_domain(directory, domid) as dom:
            if not no_create:
                await create_device(dom.store, DeviceAddress("vif", frontend_id, dom.domid,
                                                             devid),
                                    frontend_nodes={"mac": mac}, backend_nodes={"mac": mac})
            tap = TapDevice.open(tap_name, vnet_hdr=vnet_hdr)
            try:
                async with NetBackend(dom, frontend_id, devid, link=tap,
                                      max_queues=max_queues) as backend:
                    click.echo(f"ready: vif {frontend_id}.{devid} on TAP {tap.name}")
                    await backend.run(once=once)
                click.echo(f"done: {backend.generation} connection(s), "
                           f"{backend.stats.tx_packets} frames from the guest, "
                           f"{backend.stats.rx_packets} to it")
            finally:
                await tap.aclose()

    run_command(main)


@net.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--domain", "domid", type=click.IntRange(0, 0x7FEF),
              help="Domid this frontend runs in (the guest).")
@click.option("--backend", "backend_id", default=0, show_default=True,
              type=click.IntRange(0, 0x7FEF), help="Domid of the vif's backend.")
@click.option("--devid", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="The vif's device id.")
@click.option("--tap", "tap_name", required=True,
              help="TAP device that carries the guest's frames (created if it does not exist).")
@click.option("--connect-timeout", default=30.0, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds to wait for the backend.")
@click.option("--max-queues", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Most queues (tx and rx ring pairs) to ask the backend for "
                   "(multi-queue; 1: none).")
@click.option("--offload/--no-offload", default=False, show_default=True,
              help="Open the TAP with a virtio-net header and ask the backend for GSO and "
                   "checksum offload (feature-gso-tcpv4/v6): TCP frames up to 64 KiB cross "
                   "the vif whole.")
def attach(directory: str | None, domid: int | None, backend_id: int, devid: int,
           tap_name: str, connect_timeout: float, max_queues: int, offload: bool) -> None:
    """Be the guest's end of a vif, its frames on the TAP device --tap, until interrupted or
    the backend goes away."""
    from ..backends.net.tap import TapDevice, splice
    from ..frontends.net import NetFrontend

    async def main() -> None:
        async with open_cli_domain(directory, domid) as dom:
            tap = TapDevice.open(tap_name, vnet_hdr=offload)
            try:
                guest = NetFrontend(dom, backend_id, devid, max_queues=max_queues,
                                    offload=offload)
                guest.connect_timeout = connect_timeout
                try:
                    async with guest:
                        if offload:  # the host's stack hands over what the backend takes
                            tap.set_offload(guest.tx_gso)
                        mac = guest.mac.hex(":") if guest.mac else "none"
                        click.echo(f"ready: vif {devid} (mac {mac}) on TAP {tap.name}")
                        await splice(guest.stream, tap)
                except TimeoutError:
                    raise click.ClickException(
                        f"no vif backend in domain {backend_id} connected within "
                        f"{connect_timeout:g} s (is `ringkit net serve` running?)") from None
            finally:
                await tap.aclose()

    run_command(main)


__all__ = ("attach", "net", "serve")
