"""The lab fleet behaves like a fleet: booted systemd hosts, Docker, a registry."""

from __future__ import annotations

import json

import pytest

from tests.lab.conftest import HOSTS, thorfleet
from thorfleet.lab import REGISTRY, REGISTRY_PASSWORD, REGISTRY_USER


@pytest.mark.beside_first_converge  # reads the hosts only
def test_hosts_are_booted_systemd_machines_reached_over_ssh(hosts):
    for name, host in hosts.items():
        assert host.check_output("hostname") == name
        assert host.check_output("systemctl is-system-running") == "running"
        assert host.check_output("readlink /proc/1/exe") == "/usr/lib/systemd/systemd"
        assert host.service("ssh").is_running
        assert host.service("docker").is_running
        assert host.file("/usr/bin/python3").exists


@pytest.mark.beside_first_converge  # reads the hosts only
def test_each_host_has_its_own_network_namespace_and_address(hosts):
    addresses = {name: host.interface("host0").addresses for name, host in hosts.items()}
    assert addresses["thor01"][0] == "10.213.0.11"
    assert addresses["thor02"][0] == "10.213.0.12"
    # And they reach each other across the lab bridge.
    assert hosts["thor01"].run("bash -c '</dev/tcp/10.213.0.12/22'").rc == 0


def login(host) -> None:
    host.check_output(f"echo {REGISTRY_PASSWORD} | docker login --username '{REGISTRY_USER}' "
                      f"--password-stdin {REGISTRY}")


def test_an_image_pushed_by_one_host_is_pulled_by_digest_on_another(hosts):
    builder, puller = hosts["thor01"], hosts["thor02"]
    image = "10.213.0.1:5000/lab/echo:1"
    login(builder)
    builder.check_output(
        "rm -rf /tmp/img && mkdir /tmp/img && "
        "cp --parents /usr/bin/echo $(ldd /usr/bin/echo | grep -o '/[^ ]*') /tmp/img && "
        f"tar -C /tmp/img -c . | docker import - {image} && docker push {image}")
    digest = builder.check_output(
        f"docker inspect --format '{{{{index .RepoDigests 0}}}}' {image}")
    assert digest.startswith("10.213.0.1:5000/lab/echo@sha256:")
    puller.run(f"docker rmi {digest}")
    # The registry wants a login (a token its token service gives for one, as nvcr.io's),
    # over TLS the hosts trust through the lab CA.
    puller.run(f"docker logout {REGISTRY}")
    refused = puller.run(f"docker pull {digest}")
    assert refused.rc != 0 and "unauthorized" in refused.stderr, refused.stderr
    login(puller)
    assert puller.check_output(f"docker run --rm --network host {digest} "
                               "/usr/bin/echo pulled") == "pulled"


def test_up_again_is_harmless_and_reboots_nothing(lab, hosts):
    boot_ids = {n: h.file("/proc/sys/kernel/random/boot_id").content_string for n, h in
                hosts.items()}
    again = thorfleet("lab", "up", "--hosts", str(len(HOSTS)))
    assert again.returncode == 0, again.stderr
    assert boot_ids == {n: h.file("/proc/sys/kernel/random/boot_id").content_string
                        for n, h in hosts.items()}
    status = json.loads(thorfleet("lab", "status", "--json").stdout)
    assert [h["name"] for h in status["hosts"] if h["running"] and h["ssh"]] == HOSTS
    assert all(service["running"] for service in status["services"].values())
