"""The host side of a network, except its DHCP server: the bridge, its addresses, firewall rules, sysctl.

Everything is done with the host's own tools, run through :meth:`Host.run` (anyio subprocesses: the event
loop never blocks): ``ip`` for links and addresses, ``nft`` for rules, and a write to ``/proc/sys`` for
forwarding. Each step names what failed in a :class:`~avirt.errors.NetworkError` with the tool's stderr.

**What belongs to a network**, and so what :func:`tear_down` removes, and nothing else: its bridge (the
addresses go with it) and its nftables table. Every network has a table of its own, ``inet
avirt-<bridge>``, so deleting the table removes exactly its rules, whatever else the host's ruleset
holds, and no rule of one network can be left behind by another's teardown. ``ip_forward`` is turned on
for forwarding networks and never turned off again: other software on the host (another network, a
container runtime) may rely on it by then, which is also libvirt's choice.

**The rules**, by forward mode (libvirt's meaning of each):

* none (isolated): guests reach each other and the host; nothing is forwarded to or from the bridge.
* ``nat``: the subnet's traffic may leave (through ``<forward dev>`` only, when given) masqueraded; only
  replies come back in. IPv6 subnets of a NAT network are routed, not masqueraded, as in libvirt.
* ``route``: the subnet's traffic is forwarded both ways, unmasqueraded.
* ``open``: no rules at all; the host's own firewall decides.

Traffic between guests on one bridge is bridged, not routed, so it passes the forward hook only when
``br_netfilter`` is loaded; the rules accept it explicitly for that case.
"""

from __future__ import annotations

import json
import re

from avirt.errors import NetworkConflictError, NetworkError
from avirt.hosts.base import Host
from avirt.networks.model import NetworkConfig

__all__ = ["bridge_exists", "nft_table", "ruleset", "set_up", "tear_down"]


def nft_table(bridge: str) -> str:
    """The network's own nftables table (in family ``inet``), named after its bridge."""
    return "avirt-" + re.sub(r"[^A-Za-z0-9_-]", "_", bridge)


async def _ip(host: Host, *args: str, what: str) -> str:
    result = await host.run(["ip", *args])
    if result.returncode != 0:
        raise NetworkError(what, result.stderr)
    return result.stdout


async def bridge_exists(host: Host, name: str) -> bool | None:
    """True: a bridge of that name exists; False: nothing has the name; None: another kind of link has."""
    result = await host.run(["ip", "-j", "-d", "link", "show", "dev", name])
    if result.returncode != 0:
        return False
    try:
        links = json.loads(result.stdout)
        kind = links[0].get("linkinfo", {}).get("info_kind")
    except (ValueError, IndexError, AttributeError):
        return None
    return True if kind == "bridge" else None


async def links(host: Host) -> list[dict[str, object]]:
    """Every link of the host (of its network namespace), as ``ip -j link show`` describes each."""
    result = await host.run(["ip", "-j", "link", "show"])
    try:
        found = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    return [link for link in found if isinstance(link, dict) and "ifname" in link]


async def link_names(host: Host) -> set[str]:
    """Every interface name of the host, to keep a default bridge name unique."""
    return {str(link["ifname"]) for link in await links(host)}


async def set_up(host: Host, cfg: NetworkConfig, *, adopt: bool = False) -> None:
    """Make the bridge with its addresses, the rules and the forwarding the definition asks for.

    With ``adopt`` (a new controller finding a network that was running), what exists already is kept
    and only what is missing is made again; otherwise an interface of the bridge's name is a conflict.
    """
    assert cfg.bridge is not None, "a defined network always has its bridge name"
    br = cfg.bridge
    exists = await bridge_exists(host, br)
    if exists is None or (exists and not adopt):
        raise NetworkConflictError(f"network '{cfg.name}': an interface named '{br}' already exists")
    if not exists:
        options = ["stp_state", "1" if cfg.stp else "0"]
        if cfg.delay is not None:
            options += ["forward_delay", str(cfg.delay * 100)]  # centiseconds, as ip counts them
        await _ip(host, "link", "add", "name", br, "type", "bridge", *options,
                  what=f"cannot create bridge '{br}' for network '{cfg.name}'")
        if cfg.mac is not None:
            await _ip(host, "link", "set", "dev", br, "address", cfg.mac, what=f"cannot set {br}'s MAC")
        if cfg.mtu is not None:
            await _ip(host, "link", "set", "dev", br, "mtu", str(cfg.mtu), what=f"cannot set {br}'s MTU")
    present = await _addresses(host, br)
    for ip in cfg.ips:
        if ip.interface in present:
            continue
        # nodad: the bridge's own IPv6 address is ours by definition; duplicate detection would only delay
        # dnsmasq, which cannot bind an address that is still tentative.
        extra = ["nodad"] if ip.family == "ipv6" else []
        await _ip(host, "address", "add", ip.interface, "dev", br, *extra,
                  what=f"cannot give bridge '{br}' the address {ip.interface}")
    await _ip(host, "link", "set", "dev", br, "up", what=f"cannot bring bridge '{br}' up")
    if cfg.forward in ("nat", "route"):
        await _forwarding(host, ipv6=any(ip.family == "ipv6" for ip in cfg.ips))
    rules = ruleset(cfg)
    if rules is not None:
        await host.run(["nft", "delete", "table", "inet", nft_table(br)])  # an adopted one is rewritten
        result = await host.run(["nft", "-f", "-"], input=rules.encode())
        if result.returncode != 0:
            raise NetworkError(f"cannot load the firewall rules of network '{cfg.name}'", result.stderr)


async def tear_down(host: Host, cfg: NetworkConfig) -> None:
    """Remove the network's table and bridge (with its addresses); what is already gone is no error."""
    assert cfg.bridge is not None
    await host.run(["nft", "delete", "table", "inet", nft_table(cfg.bridge)])
    if await bridge_exists(host, cfg.bridge):
        await _ip(host, "link", "delete", "dev", cfg.bridge, "type", "bridge",
                  what=f"cannot delete bridge '{cfg.bridge}'")


async def _addresses(host: Host, dev: str) -> set[str]:
    result = await host.run(["ip", "-j", "address", "show", "dev", dev])
    try:
        return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(result.stdout or "[]")
                for a in link.get("addr_info", [])}
    except (ValueError, KeyError, TypeError):
        return set()


async def _forwarding(host: Host, *, ipv6: bool) -> None:
    files = ["/proc/sys/net/ipv4/ip_forward"] + (["/proc/sys/net/ipv6/conf/all/forwarding"] if ipv6 else [])
    for path in files:
        if (await host.read_text(path) or "").strip() == "1":
            continue
        # A /proc/sys file is written in place (never the temp file and rename of write_atomic).
        result = await host.run(["tee", path], input=b"1\n")
        if result.returncode != 0:
            raise NetworkError(f"cannot turn on forwarding ({path})", result.stderr)


def ruleset(cfg: NetworkConfig) -> str | None:
    """The network's nftables table as an ``nft -f`` script (None for ``open``: no rules)."""
    if cfg.forward == "open":
        return None
    assert cfg.bridge is not None
    br = _quoted(cfg.bridge)
    out = f" oifname {_quoted(cfg.forward_dev)}" if cfg.forward_dev else ""
    inn = f" iifname {_quoted(cfg.forward_dev)}" if cfg.forward_dev else ""
    forward = [f"iifname {br} oifname {br} accept"]
    nat: list[str] = []
    for ip in cfg.ips if cfg.forward is not None else []:
        family = "ip" if ip.family == "ipv4" else "ip6"
        subnet = str(ip.network)
        forward.append(f"iifname {br}{out} {family} saddr {subnet} accept")
        if cfg.forward == "nat" and ip.family == "ipv4":
            forward.append(f"{inn.strip()} oifname {br} ip daddr {subnet} ct state established,related accept"
                           .strip())
            # Not towards multicast or broadcast: those stay on the host's own segment, unmasqueraded.
            nat.append(f"ip saddr {subnet} ip daddr != {{ {subnet}, 224.0.0.0/24, 255.255.255.255 }}{out} "
                       "masquerade")
        else:
            forward.append(f"{inn.strip()} oifname {br} {family} daddr {subnet} accept".strip())
    forward += [f"iifname {br} reject", f"oifname {br} reject"]
    lines = [f"table inet {nft_table(cfg.bridge)} {{",
             "  chain forward {", "    type filter hook forward priority filter; policy accept;",
             *(f"    {rule}" for rule in forward), "  }"]
    if nat:
        lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;",
                  *(f"    {rule}" for rule in nat), "  }"]
    return "\n".join([*lines, "}", ""])


def _quoted(name: str) -> str:
    return '"' + name.replace('"', "") + '"'
