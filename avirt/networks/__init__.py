"""Virtual networks: libvirt network XML, and the host side that makes one real.

``model.py`` (the definition as data, and the rules it must keep) and ``xml.py`` (libvirt network XML in
and out) are pure. The modules that touch the host follow: ``plumbing.py`` (bridge, addresses, firewall
rules, sysctl), ``dnsmasq.py`` (the DHCP and DNS server of one network), ``taps.py`` (a guest's tap
device, opened by avirt and handed to QEMU as a descriptor) and ``manager.py`` (defined networks, their
state files and lifecycle, used by the QEMU driver).
"""

from avirt.networks.model import DHCPHost, DHCPLease, DHCPRange, DNSHost, IPConfig, NetworkConfig
from avirt.networks.xml import network_to_xml, parse_network_xml

__all__ = [
    "DHCPHost",
    "DHCPLease",
    "DHCPRange",
    "DNSHost",
    "IPConfig",
    "NetworkConfig",
    "network_to_xml",
    "parse_network_xml",
]
