"""Network XML: the libvirt subset avirt builds, read and written back exactly, and the rules checked
before anything is created."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avirt.errors import AvirtError, InvalidNetworkXMLError, NetworkConflictError, UnsupportedError
from avirt.networks import network_to_xml, parse_network_xml
from avirt.networks.model import check_against, default_bridge
from tests.fuzzing import FUZZ, FUZZ_MORE, _escape, nasty_text, xmlish_text

FULL = """\
<network>
  <name>lab</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <forward mode="nat" dev="eth0"/>
  <bridge name="labbr0" stp="off" delay="2"/>
  <mac address="52:54:00:0a:cd:21"/>
  <mtu size="9000"/>
  <domain name="lab.test"/>
  <dns>
    <host ip="10.9.0.50">
      <hostname>printer</hostname>
      <hostname>printer.lab.test</hostname>
    </host>
  </dns>
  <ip address="10.9.0.1" netmask="255.255.255.0">
    <dhcp>
      <range start="10.9.0.100" end="10.9.0.199"/>
      <host mac="52:54:00:00:00:01" name="a" ip="10.9.0.11"/>
    </dhcp>
  </ip>
  <ip family="ipv6" address="fd00:9::1" prefix="64">
    <dhcp>
      <range start="fd00:9::100" end="fd00:9::1ff"/>
      <host name="b" ip="fd00:9::12"/>
    </dhcp>
  </ip>
</network>
"""


def net(body: str, name: str = "n", uuid: str = "") -> str:
    return f"<network><name>{name}</name>{f'<uuid>{uuid}</uuid>' if uuid else ''}{body}</network>"


def test_a_full_definition_round_trips_exactly() -> None:
    cfg = parse_network_xml(FULL)
    assert cfg.forward == "nat" and cfg.forward_dev == "eth0" and cfg.bridge == "labbr0" and cfg.stp is False
    assert cfg.mtu == 9000 and cfg.domain == "lab.test" and cfg.dns_hosts[0].hostnames == ["printer",
                                                                                           "printer.lab.test"]
    v4, v6 = cfg.ips
    assert (v4.prefix, v4.family, v4.ranges[0].start, v4.hosts[0].mac) == (24, "ipv4", "10.9.0.100",
                                                                          "52:54:00:00:00:01")
    assert (v6.prefix, v6.family, v6.hosts[0].name) == (64, "ipv6", "b")
    assert network_to_xml(cfg) == FULL
    assert parse_network_xml(network_to_xml(cfg)) == cfg


@pytest.mark.parametrize("body", [
    "<forward/><ip address='192.168.5.1' prefix='24'/>",
    "<forward mode='route'/><ip address='192.168.5.1' prefix='24'/>",
    "<forward mode='open'/>",
    "",  # isolated, no address at all
])
def test_forward_modes_and_isolated_networks_round_trip(body: str) -> None:
    cfg = parse_network_xml(net(body))
    assert parse_network_xml(network_to_xml(cfg)) == cfg
    assert network_to_xml(parse_network_xml(network_to_xml(cfg))) == network_to_xml(cfg)


def test_a_missing_uuid_is_generated_and_kept() -> None:
    cfg = parse_network_xml(net(""))
    assert len(cfg.uuid) == 36
    assert parse_network_xml(network_to_xml(cfg)).uuid == cfg.uuid


@pytest.mark.parametrize(("body", "xpath"), [
    ("<forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>", "/network/forward/nat"),
    ("<forward mode='bridge'/>", "/network/forward/@mode='bridge'"),
    ("<bridge name='b0' macTableManager='libvirt'/>", "/network/bridge/@macTableManager"),
    ("<ip address='10.0.0.1' prefix='24'><tftp root='/srv'/></ip>", "/network/ip/tftp"),
    ("<dns enable='no'/>", "/network/dns/@enable"),
    ("<portgroup name='x'/>", "/network/portgroup"),
])
def test_unsupported_items_are_refused_by_xpath(body: str, xpath: str) -> None:
    with pytest.raises(UnsupportedError) as caught:
        parse_network_xml(net(body))
    assert xpath in caught.value.items


@pytest.mark.parametrize(("body", "words"), [
    ("<bridge name='a-very-long-bridge'/>", "at most 15"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip>",
     "not inside the subnet"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.9' end='10.0.0.2'/></dhcp></ip>",
     "ends before"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' ip='10.1.0.5'/></dhcp></ip>",
     "not inside the subnet"),
    ("<ip address='10.0.0.0' prefix='24'/>", "not a host address"),
    ("<ip address='10.0.0.1'/>", "netmask= or prefix="),
    ("<ip address='10.0.0.1' netmask='255.0.255.0'/>", "contiguous"),
    ("<ip address='fd00::1' netmask='255.255.0.0'/>", "prefix="),
    ("<ip family='ipv4' address='fd00::1' prefix='64'/>", "not an IPv4 address"),
    ("<ip address='10.0.0.1' prefix='24'><dhcp/></ip><ip address='10.1.0.1' prefix='24'><dhcp/></ip>",
     "at most one"),
    ("<mtu size='20'/>", "from 68"),
    ("<bridge stp='maybe'/>", "'on' or 'off'"),
])
def test_invalid_definitions_are_refused_with_the_reason(body: str, words: str) -> None:
    with pytest.raises(InvalidNetworkXMLError, match=words):
        parse_network_xml(net(body))


def test_broken_documents_and_other_roots() -> None:
    with pytest.raises(InvalidNetworkXMLError, match="malformed"):
        parse_network_xml("<network><name>x</name>")
    with pytest.raises(InvalidNetworkXMLError, match="root element"):
        parse_network_xml("<domain/>")
    with pytest.raises(InvalidNetworkXMLError, match="name"):
        parse_network_xml("<network/>")


def test_networks_on_one_bridge_or_with_overlapping_subnets_conflict() -> None:
    a = parse_network_xml(net("<bridge name='br7'/><ip address='10.7.0.1' prefix='16'/>", "a"))
    same_bridge = parse_network_xml(net("<bridge name='br7'/>", "b"))
    overlap = parse_network_xml(net("<ip address='10.7.3.1' prefix='24'/>", "c"))
    apart = parse_network_xml(net("<bridge name='br8'/><ip address='10.8.0.1' prefix='24'/>", "d"))
    with pytest.raises(NetworkConflictError, match="bridge 'br7'"):
        check_against(same_bridge, [a])
    with pytest.raises(NetworkConflictError, match="overlaps"):
        check_against(overlap, [a])
    check_against(apart, [a])
    check_against(a, [a])  # itself (a redefinition) is no conflict


def test_default_bridge_names_skip_the_taken_ones() -> None:
    assert default_bridge([]) == "avirbr0"
    assert default_bridge(["avirbr0", "avirbr2"]) == "avirbr1"


# -- generated inputs: a typed error or an exact round trip ------------------------------------------------

_SLOTS = {  # each template's {} takes one generated value, escaped for an attribute or text
    "name": "<network><name>{}</name></network>",
    "uuid": "<network><name>n</name><uuid>{}</uuid></network>",
    "bridge": "<network><name>n</name><bridge name='{}' stp='on'/></network>",
    "delay": "<network><name>n</name><bridge name='b' delay='{}'/></network>",
    "mtu": "<network><name>n</name><mtu size='{}'/></network>",
    "forward": "<network><name>n</name><forward mode='{}'/></network>",
    "address": "<network><name>n</name><ip address='{}' prefix='24'/></network>",
    "prefix": "<network><name>n</name><ip address='10.0.0.1' prefix='{}'/></network>",
    "netmask": "<network><name>n</name><ip address='10.0.0.1' netmask='{}'/></network>",
    "range": "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='{}' "
             "end='10.0.0.9'/></dhcp></ip></network>",
    "host": "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><host mac='{}' "
            "ip='10.0.0.5'/></dhcp></ip></network>",
    "hostname": "<network><name>n</name><dns><host ip='10.0.0.5'><hostname>{}</hostname></host></dns>"
                "</network>",
}


@FUZZ_MORE
@given(slot=st.sampled_from(sorted(_SLOTS)), value=nasty_text())
def test_generated_values_are_a_typed_error_or_round_trip(slot: str, value: str) -> None:
    document = _SLOTS[slot].format(_escape(value))
    try:
        cfg = parse_network_xml(document)
    except AvirtError:
        return
    text = network_to_xml(cfg)
    assert parse_network_xml(text) == cfg
    assert network_to_xml(parse_network_xml(text)) == text


@FUZZ
@given(document=xmlish_text())
def test_random_documents_are_a_typed_error_or_round_trip(document: str) -> None:
    try:
        cfg = parse_network_xml(document)
    except AvirtError:
        return
    assert parse_network_xml(network_to_xml(cfg)) == cfg
