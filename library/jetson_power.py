#!/usr/bin/python
"""Ansible module: a Jetson's power mode, chosen by name, and jetson_clocks kept at boot."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: jetson_power
short_description: Set a Jetson's power mode by name and keep jetson_clocks across reboots
description:
  - Reads the power modes a Jetson has from its C(nvpmodel.conf) (mode numbers differ
    between modules, names are what people use) and the mode in force from C(nvpmodel -q).
  - With O(mode), sets that mode with C(nvpmodel -m <id>). A mode that nvpmodel says needs
    a reboot is not forced, nothing changes, and the result says so (RV(reboot_required))
    with the command that sets it and reboots (RV(reboot_command)), for the
    C(ansible.builtin.reboot) module.
  - With O(clocks), keeps a systemd unit that runs C(jetson_clocks) at boot (storing the
    mode's own clocks first, restoring them when it stops), or removes that unit. Around
    a mode change the unit is stopped and started again, so the clocks are the new mode's
    maximum.
  - In check mode, and for preflight, only reads and reports RV(problems): a mode name
    the host does not have (naming those it has), a host without nvpmodel or
    jetson_clocks where one is asked for. Outside check mode a problem fails the task.
options:
  mode:
    description: The power mode's name in O(conf) (C(MAXN) on a Thor developer kit); none
      leaves the mode alone.
    type: str
  clocks:
    description: V(true) keeps jetson_clocks on through the unit O(clocks_unit); V(false)
      removes that unit (the clocks go back to the mode's defaults); none leaves it alone.
    type: bool
  conf:
    description: The host's nvpmodel configuration.
    type: path
    default: /etc/nvpmodel.conf
  clocks_unit:
    description: The systemd unit that runs jetson_clocks at boot.
    type: str
    default: thorfleet-jetson-clocks.service
  clocks_store:
    description: Where the unit stores the mode's own clocks before it raises them.
    type: path
    default: /var/lib/thorfleet/jetson_clocks.conf
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Run at the developer kit's full power, clocks at their maximum
  jetson_power:
    mode: MAXN
    clocks: true
  register: power

- name: Only read the power state
  jetson_power:
  check_mode: true
"""

RETURN = r"""
power:
  description: The host's power state after the task.
  returned: always
  type: dict
  sample:
    nvpmodel: /usr/sbin/nvpmodel
    jetson_clocks: /usr/bin/jetson_clocks
    modes: {MAXN: 0, 120W: 1, 90W: 2, 70W: 3}
    default: MAXN
    mode: MAXN
    mode_id: 0
    clocks: true
problems:
  description: Why the request cannot be met on this host; empty when it can.
  returned: always
  type: list
  elements: str
reboot_required:
  description: nvpmodel wants a reboot to change to O(mode); the mode did not change.
  returned: always
  type: bool
reboot_command:
  description: The command that sets O(mode) and reboots (answers nvpmodel's question).
  returned: when reboot_required
  type: str
"""

import os  # noqa: E402
import re  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

_MODEL = re.compile(r"^\s*<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>", re.MULTILINE)
_DEFAULT = re.compile(r"^\s*<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>", re.MULTILINE)
_REBOOT = re.compile(r"reboot required", re.IGNORECASE)


def parse_conf(text):
    """({name: id}, default id or None) from nvpmodel.conf."""
    modes = {name: int(number) for number, name in _MODEL.findall(text or "")}
    default = _DEFAULT.search(text or "")
    return modes, int(default.group(1)) if default else None


def parse_query(output):
    """(name, id) from `nvpmodel -q`: 'NV Power Mode: MAXN' then the id on a line."""
    name = re.search(r"NV Power Mode:\s*(\S+)", output or "")
    number = re.search(r"^\s*(\d+)\s*$", output or "", re.MULTILINE)
    return (name.group(1) if name else None, int(number.group(1)) if number else None)


def mode_problems(wanted, modes, nvpmodel, conf):
    if not wanted:
        return []
    if not nvpmodel or not modes:
        return [f"thorfleet_power_mode is {wanted!r}, but this host has no nvpmodel with "
                f"power modes ({conf}); unset it for hosts that are not Jetsons"]
    if wanted not in modes:
        listed = ", ".join(f"{name} ({number})" for name, number
                           in sorted(modes.items(), key=lambda item: item[1]))
        return [f"thorfleet_power_mode {wanted!r} is not a power mode of this host; its "
                f"modes ({conf}): {listed}"]
    return []


def clocks_unit_text(jetson_clocks, store):
    return (
        "# Written by thorfleet (thorfleet_jetson_clocks): clocks at the power mode's\n"
        "# maximum from boot; stopping the unit puts the mode's own clocks back.\n"
        "[Unit]\n"
        "Description=thorfleet: jetson_clocks at the power mode's maximum\n"
        "After=nvpmodel.service\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStartPre={jetson_clocks} --store {store}\n"
        f"ExecStart={jetson_clocks}\n"
        f"ExecStop={jetson_clocks} --restore {store}\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


class Power:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.unit = params["clocks_unit"]
        self.unit_path = os.path.join("/etc/systemd/system", self.unit)
        self.nvpmodel = module.get_bin_path("nvpmodel", opt_dirs=["/usr/sbin", "/usr/bin"])
        self.jetson_clocks = module.get_bin_path("jetson_clocks",
                                                 opt_dirs=["/usr/bin", "/usr/sbin"])
        try:
            with open(params["conf"], encoding="utf-8", errors="replace") as handle:
                self.modes, default = parse_conf(handle.read())
        except OSError:
            self.modes, default = {}, None
        self.default = next((n for n, i in self.modes.items() if i == default), None)

    def run(self, *argv, data=None, check=True):
        rc, out, err = self.module.run_command(list(argv), data=data)
        if check and rc != 0:
            self.module.fail_json(msg=f"{' '.join(argv)} failed ({rc}): {(err or out).strip()}")
        return rc, out, err

    def current(self):
        if not self.nvpmodel:
            return None, None
        _rc, out, _err = self.run(self.nvpmodel, "-q", check=False)
        return parse_query(out)

    def clocks_active(self):
        if not os.path.exists(self.unit_path):
            return False
        rc, _out, _err = self.run("systemctl", "is-active", "--quiet", self.unit, check=False)
        return rc == 0

    def state(self):
        name, number = self.current()
        return {"nvpmodel": self.nvpmodel, "jetson_clocks": self.jetson_clocks,
                "modes": self.modes, "default": self.default, "mode": name,
                "mode_id": number, "clocks": self.clocks_active()}

    def set_mode(self, number):
        """nvpmodel -m, saying no to a reboot; True when set, False when it needs one."""
        was_on = self.clocks_active()
        if was_on:
            self.run("systemctl", "stop", self.unit)
        try:
            _rc, out, err = self.run(self.nvpmodel, "-m", str(number), data="no", check=False)
        finally:
            if was_on:
                self.run("systemctl", "start", self.unit)
        if self.current()[1] == number:
            return True
        if _REBOOT.search(out + err):
            return False
        self.module.fail_json(msg=f"nvpmodel -m {number} did not set the mode: "
                                  f"{(err or out).strip() or 'no output'}")

    def set_clocks(self, on, store):
        """The unit present and running, or gone; True when something changed."""
        changed = False
        if on:
            text = clocks_unit_text(self.jetson_clocks, store)
            try:
                with open(self.unit_path, encoding="utf-8") as handle:
                    before = handle.read()
            except OSError:
                before = None
            if before != text:
                changed = True
                if not self.module.check_mode:
                    if before is not None:
                        self.run("systemctl", "stop", self.unit, check=False)
                    os.makedirs(os.path.dirname(store), exist_ok=True)
                    with open(self.unit_path, "w", encoding="utf-8") as handle:
                        handle.write(text)
                    self.run("systemctl", "daemon-reload")
            if not self.module.check_mode:
                enabled = self.run("systemctl", "is-enabled", "--quiet", self.unit,
                                   check=False)[0] == 0
                if not enabled or not self.clocks_active():
                    changed = True
                    self.run("systemctl", "enable", "--now", self.unit)
            return changed
        if os.path.exists(self.unit_path):
            if not self.module.check_mode:
                self.run("systemctl", "disable", "--now", self.unit)
                os.unlink(self.unit_path)
                self.run("systemctl", "daemon-reload")
            return True
        return False


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str"},
            "clocks": {"type": "bool"},
            "conf": {"type": "path", "default": "/etc/nvpmodel.conf"},
            "clocks_unit": {"type": "str", "default": "thorfleet-jetson-clocks.service"},
            "clocks_store": {"type": "path", "default": "/var/lib/thorfleet/jetson_clocks.conf"},
        },
        supports_check_mode=True,
    )
    params = module.params
    power = Power(module)
    problems = mode_problems(params["mode"], power.modes, power.nvpmodel, params["conf"])
    if params["clocks"] and not power.jetson_clocks:
        problems.append("thorfleet_jetson_clocks is true, but this host has no jetson_clocks "
                        "(it comes with L4T's nvidia-l4t-tools)")
    if problems:
        if module.check_mode:
            module.exit_json(changed=False, power=power.state(), problems=problems,
                             reboot_required=False)
        module.fail_json(msg="; ".join(problems), problems=problems)

    changed, reboot_required, result = False, False, {}
    if params["mode"]:
        wanted = power.modes[params["mode"]]
        if power.current()[1] != wanted:
            if module.check_mode or power.set_mode(wanted):
                changed = True
            else:
                reboot_required = True
                result["reboot_command"] = (f"/bin/sh -c 'echo YES | {power.nvpmodel} "
                                            f"-m {int(wanted)}'")
    if params["clocks"] is not None:
        changed = power.set_clocks(params["clocks"], params["clocks_store"]) or changed
    module.exit_json(changed=changed, power=power.state(), problems=[],
                     reboot_required=reboot_required, **result)


if __name__ == "__main__":
    main()
