"""The docker/ topology built in network namespaces from docker/docker-compose.yml itself and
the config files it mounts, so the netns tests, the demo and docker cannot drift apart.

Each compose service becomes a host, each network a veth pair between its two members
(with the network's MTU and the services' static addresses), each ROUTES entry a route,
and each service whose command is `up CONFIG` runs `vpn up` on the file compose mounts.
"""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lab.netns import Host, Lab, Process
from lab.wg_lab import start_vpn

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "docker-compose.yml"
MTU_OPTION = "com.docker.network.driver.mtu"


@dataclass
class Site:
    """The built topology: hosts by service name, and what each gateway runs."""

    lab: Lab
    hosts: dict[str, Host]
    addresses: dict[str, dict[str, str]]  # service -> network -> address
    configs: dict[str, Path]  # gateway service -> its config, copied with a unique name
    interfaces: dict[str, str] = field(default_factory=dict)  # service -> network -> ifname
    processes: dict[str, Process] = field(default_factory=dict)

    def start_gateway(self, service: str) -> Process:
        proc = start_vpn(self.hosts[service], self.configs[service])
        self.processes[service] = proc
        return proc

    def stop_gateway(self, service: str) -> str:
        proc = self.processes.pop(service)
        proc.stop()
        return proc.output()


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def build(lab: Lab, path: Path = COMPOSE) -> Site:
    spec = load_compose(path)
    services: dict[str, dict] = spec["services"]
    hosts = {}
    for name, service in services.items():
        forwarding = str(service.get("sysctls", {}).get("net.ipv4.ip_forward", "0")) == "1"
        hosts[name] = lab.host(name, forwarding=forwarding)
    addresses: dict[str, dict[str, str]] = {name: {} for name in services}
    interfaces: dict[str, str] = {}
    for net_name, network in spec["networks"].items():
        subnet = ipaddress.ip_network(network["ipam"]["config"][0]["subnet"])
        mtu = int(network.get("driver_opts", {}).get(MTU_OPTION, 1500))
        members = [(name, service["networks"][net_name]["ipv4_address"])
                   for name, service in services.items()
                   if net_name in service.get("networks", {})]
        if len(members) != 2:
            raise ValueError(f"network {net_name} has {len(members)} members; a veth pair "
                             "joins exactly two")
        (a, a_addr), (b, b_addr) = members
        ifname = f"eth-{net_name}"[:15]
        lab.link(hosts[a], hosts[b], a_addrs=[f"{a_addr}/{subnet.prefixlen}"],
                 b_addrs=[f"{b_addr}/{subnet.prefixlen}"], mtu=mtu, a_name=ifname,
                 b_name=ifname)
        addresses[a][net_name], addresses[b][net_name] = a_addr, b_addr
        interfaces[f"{a}/{net_name}"] = interfaces[f"{b}/{net_name}"] = ifname
    configs = {}
    for name, service in services.items():
        for route in str(service.get("environment", {}).get("ROUTES", "")).split(";"):
            if route.strip():
                hosts[name].run("ip", "route", "replace", *route.split())
        command = service.get("command", [])
        if command[:1] == ["up"]:
            configs[name] = _copy_config(lab, service, command[1], name)
    return Site(lab, hosts, addresses, configs, interfaces)


def _copy_config(lab: Lab, service: dict, inside: str, name: str) -> Path:
    """The host file compose mounts at `inside`, copied under a name unique to this run:
    the interface is named after the file, and /var/run/wireguard is shared by all."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if target == inside:
            unique = f"{name.replace('-', '')[:6]}{lab.tag[-5:]}"
            copy = lab.path(f"{unique}.conf")
            shutil.copyfile((COMPOSE.parent / source).resolve(), copy)
            copy.chmod(0o600)
            return copy
    raise ValueError(f"service {name} runs `up {inside}` but mounts no file there")
