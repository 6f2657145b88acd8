"""The jetson_power module's reading of a Jetson: modes by name from nvpmodel.conf (the
lab's Thor-shaped one), the mode in force from `nvpmodel -q`, and the refusal of a name
the host does not have, naming those it has."""

from __future__ import annotations

from tests.conftest import load
from thorfleet.lab import thor as lab_thor

power = load("library/jetson_power.py")


def test_modes_are_read_by_name_with_their_ids_and_the_default():
    modes, default = power.parse_conf(lab_thor.nvpmodel_conf())
    assert modes == {"MAXN": 0, "120W": 1, "90W": 2, "70W": 3}
    assert default == 0
    assert power.parse_conf("") == ({}, None)


def test_the_mode_in_force_is_the_name_and_id_nvpmodel_prints():
    assert power.parse_query("NV Power Mode: 120W\n1\n") == ("120W", 1)
    assert power.parse_query("") == (None, None)


def test_a_name_the_host_does_not_have_is_refused_naming_those_it_has():
    modes = {"MAXN": 0, "120W": 1, "90W": 2}
    (problem,) = power.mode_problems("MAXQ", modes, "/usr/sbin/nvpmodel", "/etc/nvpmodel.conf")
    assert problem == ("thorfleet_power_mode 'MAXQ' is not a power mode of this host; its "
                       "modes (/etc/nvpmodel.conf): MAXN (0), 120W (1), 90W (2)")
    # Hostile text is quoted as data, never matched loosely.
    (problem,) = power.mode_problems("MAXN\n; reboot", modes, "/usr/sbin/nvpmodel", "/c")
    assert "'MAXN\\n; reboot' is not a power mode" in problem
    assert power.mode_problems("90W", modes, "/usr/sbin/nvpmodel", "/c") == []
    assert power.mode_problems("", {}, None, "/c") == []
    (problem,) = power.mode_problems("MAXN", {}, None, "/etc/nvpmodel.conf")
    assert "this host has no nvpmodel with power modes (/etc/nvpmodel.conf)" in problem


def test_the_clocks_unit_stores_the_modes_clocks_raises_them_and_puts_them_back():
    text = power.clocks_unit_text("/usr/bin/jetson_clocks", "/var/lib/thorfleet/jc.conf")
    assert "ExecStartPre=/usr/bin/jetson_clocks --store /var/lib/thorfleet/jc.conf\n" in text
    assert "ExecStart=/usr/bin/jetson_clocks\n" in text
    assert "ExecStop=/usr/bin/jetson_clocks --restore /var/lib/thorfleet/jc.conf\n" in text
    assert "WantedBy=multi-user.target" in text and "After=nvpmodel.service" in text
