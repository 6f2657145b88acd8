"""The built-in lab fleet: Debian hosts booted as real systemd machines on this machine.

Each host is a ``systemd-nspawn --boot`` container with its own network namespace,
joined to one bridge whose address on this machine (the gateway, ``10.213.0.1``) also
carries the lab's services: an image registry today, mirrors in later phases. Hosts run
sshd, Python and a Docker engine, so Ansible reaches them exactly as it reaches a Thor.

Nothing here needs a cache; a root file system built once is kept under the cache
directory and copied per host, which makes a second ``up`` take seconds.

The package, by concern: config (addresses, settings, helpers), machine (this machine's
packages, the root file system, the bridge), upstreams (registry, sources, hubs),
hosts (booting and reaching them), inventory (what `up` writes), processes (pid files),
fleet (the Lab, whose `up` tells the story), and the lab's stand-ins and data: hub
(repositories the hubs serve), images (the engine stand-in images), thor (a Thor's
files, commands and power stand-ins), gguf (the tiny model).
"""

from __future__ import annotations

from thorfleet.lab.config import (
    BRIDGE,
    FILE_MIRROR,
    FLEET_SERVICES,
    GATEWAY,
    HF_MIRROR,
    LAB_SERVICES,
    LOGIN_USER,
    MODELSCOPE,
    REGISTRY,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    SOURCE_MIRROR,
    LabError,
    host_address,
    host_name,
)
from thorfleet.lab.fleet import Lab, status_json, status_table

__all__ = ["BRIDGE", "FILE_MIRROR", "FLEET_SERVICES", "GATEWAY", "HF_MIRROR", "LAB_SERVICES",
           "LOGIN_USER",
           "MODELSCOPE", "REGISTRY", "REGISTRY_PASSWORD", "REGISTRY_USER", "SOURCE_MIRROR",
           "Lab", "LabError", "host_address", "host_name", "status_json", "status_table"]
