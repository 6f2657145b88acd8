#!/usr/bin/python
"""Ansible module: build a ggml engine into a stamped directory, only when its inputs changed."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ggml_build
short_description: Build llama.cpp or whisper.cpp once per set of inputs, switching C(current)
description:
  - Computes a build stamp from the source commit, the CMake flags, the targets, the CUDA
    version and the compiler version.
  - When the build that C(current) points to has that stamp, nothing runs and nothing changes.
  - Otherwise configures and builds into C(build-<stamp>) next to C(current), and only after
    a successful build switches the C(current) link to it. A failed build leaves C(current),
    and what runs from it, untouched; its directory stays, so a retry is incremental.
  - A build with the wanted stamp that already exists (a rollback) is switched to without
    compiling. The newest O(keep) complete builds are kept, C(current) among them.
  - With O(peer), a build with the wanted stamp that another host of the fleet holds is
    received instead of compiled: its binaries and record, copied with rsync from that
    host's share of its builds and each verified against the size and sha256 the peer
    reported (O(report), read over Ansible's connection). The stamp stays the guard: the
    received record must have this host's own stamp, or nothing is switched to.
  - With O(report), only reads (in check mode too): whether the wanted build is here and
    complete (C(ready)), and its files with their sizes and sums (C(files)), for a host
    receiving it.
  - In check mode, reports whether a rebuild would happen and why (old and new stamp as diff).
options:
  name:
    description: Engine name, for messages (C(llama.cpp), C(whisper.cpp)).
    type: str
    required: true
  source:
    description: The git checkout to build.
    type: path
    required: true
  commit:
    description: The commit checked out in O(source) (the git module's C(after)).
    type: str
    required: true
  build_root:
    description: Where C(build-<stamp>) directories and the C(current) link live.
    type: path
    required: true
  cmake_flags:
    description: CMake -D flags, in order.
    type: list
    elements: str
    default: []
  targets:
    description: CMake targets to build; their binaries are expected in C(bin/).
    type: list
    elements: str
    required: true
  cuda_version:
    description: CUDA version of the host (part of the stamp); empty for CPU builds.
    type: str
    default: ""
  ccache_dir:
    description: Compiler cache directory (C(CCACHE_DIR)); empty to build without one.
    type: path
  jobs:
    description: Parallel compile jobs; 0 means one per CPU.
    type: int
    default: 0
  keep:
    description: Complete builds to keep, C(current) included (2 keeps one for rollback).
    type: int
    default: 2
  report:
    description: Only read the wanted build (C(ready), C(files)); change nothing.
    type: bool
    default: false
  peer:
    description: A host of the fleet that holds the wanted build, to receive it from.
    type: dict
    suboptions:
      name:
        description: The peer's inventory name, for messages.
        type: str
        required: true
      url:
        description: rsync URL of the build's directory on the peer
          (C(rsync://<address>:<port>/thorfleet-builds/<engine>/build-<stamp>)).
        type: str
        required: true
      stamp:
        description: The stamp of the peer's build (O(report)). Another stamp than this
          host's own (another compiler, say) is not received: the build is compiled here.
        type: str
        required: true
      files:
        description: The build's files as the peer reported them (O(report)), by path
          relative to the build's directory, each with C(size) and C(sha256).
        type: dict
        required: true
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Build llama-server for a Thor
  ggml_build:
    name: llama.cpp
    source: /opt/thorfleet/llama.cpp/src
    commit: "{{ checkout.after }}"
    build_root: /opt/thorfleet/llama.cpp
    cmake_flags: [-DGGML_CUDA=ON, -DCMAKE_CUDA_ARCHITECTURES=110]
    targets: [llama-server]
    cuda_version: "13.0.48"
    ccache_dir: /var/cache/thorfleet/ccache
"""

RETURN = r"""
stamp:
  description: The stamp of the build C(current) points to after the task.
  returned: always
  type: str
  sample: 3f9a1c0d2b7e4a61
commit:
  description: The commit the build is of (O(commit)), for the hosts that copy it.
  returned: always
  type: str
previous:
  description: The stamp C(current) pointed to before, if any.
  returned: always
  type: str
build_dir:
  description: The directory of the wanted build.
  returned: always
  type: str
binaries:
  description: Target name to binary path, through C(current).
  returned: always
  type: dict
  sample: {llama-server: /opt/thorfleet/llama.cpp/current/bin/llama-server}
up_to_date:
  description: Whether C(current) already had the wanted stamp (nothing to build or switch).
  returned: always
  type: bool
compiled:
  description: Whether a compiler ran.
  returned: always
  type: bool
ready:
  description: Whether the wanted build is on the host, complete and of the wanted stamp.
  returned: always
  type: bool
files:
  description: With O(report), the wanted build's files (its binaries and record) by path,
    each with C(size) and C(sha256); empty when it is not ready or holds other than regular
    files in C(bin/).
  returned: with O(report)
  type: dict
received_from:
  description: The peer the build was received from, when it was.
  returned: when received
  type: str
reason:
  description: Why a build or switch happened (or would), naming the inputs that changed.
  returned: always
  type: str
"""

import json  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# What a build directory is (its record, stamp and files; keeping builds beside `current`)
# and receiving one from a peer: this role's module_utils/.
from ansible.module_utils.thorfleet_build_dirs import (  # noqa: E402
    build_files,
    build_record,
    current_dir,
    explain,
    missing_targets,
    prune,
    read_record,
    ready,
    stamp_of,
    switch,
    write_record,
)
from ansible.module_utils.thorfleet_build_peer import receive  # noqa: E402


def error_excerpt(output, lines=40):
    """The compiler's errors, else the end of the output."""
    text = output.splitlines()
    errors = [line for line in text if "error" in line.lower()]
    return "\n".join((errors or text)[-lines:])


class Builder:
    """Compiles a build where its stamp is not current, or receives it from a peer."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.root = self.params["build_root"]
        self.current = os.path.join(self.root, "current")

    def compiler_version(self):
        versions = []
        for name in ("cc", "c++"):
            path = self.module.get_bin_path(name)
            # Missing only in check mode before the build tools are installed.
            if not path:
                versions.append(f"{name} not installed")
                continue
            _rc, out, _err = self.module.run_command([path, "--version"], check_rc=True)
            versions.append(out.splitlines()[0].strip())
        return " / ".join(versions)

    def env(self):
        env = {}
        if self.params["ccache_dir"]:
            # Paths relative to the build root hash alike in every build-<stamp>, so a
            # ref bump or another host's build hits the cache.
            env.update(CCACHE_DIR=self.params["ccache_dir"],
                       CCACHE_BASEDIR=os.path.dirname(self.root.rstrip("/")),
                       CCACHE_NOHASHDIR="1")
        return env

    def run_step(self, argv, what):
        rc, out, err = self.module.run_command(argv, environ_update=self.env())
        if rc != 0:
            output = out + err
            self.module.fail_json(
                msg=(f"{self.params['name']} {what} failed at commit "
                     f"{self.params['commit'][:12]} (the previous build stays current):\n"
                     f"{error_excerpt(output)}"),
                rc=rc, stdout_tail=output[-8000:])

    def compile(self, build_dir, record):
        cmake = self.module.get_bin_path("cmake", required=True)
        self.run_step([cmake, "-S", self.params["source"], "-B", build_dir,
                       *self.params["cmake_flags"]], "configure")
        jobs = self.params["jobs"] or os.cpu_count() or 1
        self.run_step([cmake, "--build", build_dir, "--config", "Release", "-j", str(jobs),
                       "--target", *self.params["targets"]], "build")
        missing = missing_targets(build_dir, self.params["targets"])
        if missing:
            self.module.fail_json(msg=f"{self.params['name']} built, but without "
                                      f"{', '.join(missing)} in {build_dir}/bin")
        write_record(build_dir, record)

    def run(self):
        p = self.params
        record = build_record(p["name"], p["commit"], p["cmake_flags"], p["targets"],
                              p["cuda_version"], self.compiler_version())
        stamp = stamp_of(record)
        build_dir = os.path.join(self.root, f"build-{stamp}")
        current = current_dir(self.root)
        current_record = read_record(current) if current else None
        previous = stamp_of(current_record) if current_record else ""
        is_ready = ready(build_dir, stamp)
        result = {"stamp": stamp, "commit": p["commit"], "previous": previous,
                  "build_dir": build_dir,
                  "binaries": {t: os.path.join(self.current, "bin", t) for t in p["targets"]},
                  "compiled": False, "ready": is_ready,
                  "up_to_date": current == build_dir and current_record is not None}
        if p["report"]:
            self.module.exit_json(changed=False, files=build_files(build_dir) if is_ready else {},
                                  **result)
        if result["up_to_date"]:
            self.module.exit_json(changed=False, reason="build is current", **result)

        reason = explain(current_record, record)
        peer = p["peer"] if p["peer"] and p["peer"]["stamp"] == stamp else None
        reason += ("; switching to the kept build" if is_ready
                   else f"; receiving it from {peer['name']}" if peer
                   else f"; building (peer {p['peer']['name']}'s build is "
                        f"{p['peer']['stamp']})" if p["peer"]
                   else "; building")
        result.update(
            reason=reason,
            diff={"before": json.dumps({"stamp": previous, **(current_record or {})},
                                       indent=2, sort_keys=True) + "\n",
                  "after": json.dumps({"stamp": stamp, **record},
                                      indent=2, sort_keys=True) + "\n",
                  "before_header": f"{p['name']} current",
                  "after_header": f"{p['name']} wanted ({reason})"})
        if self.module.check_mode:
            self.module.exit_json(changed=True, **result)

        os.makedirs(self.root, exist_ok=True)
        if not is_ready and peer:
            receive(self.module, p["name"], build_dir, stamp, peer, p["targets"])
            result["received_from"] = peer["name"]
        elif not is_ready:
            self.compile(build_dir, record)
            result["compiled"] = True
        switch(self.root, build_dir)
        prune(self.root, build_dir, p["keep"])
        self.module.exit_json(changed=True, **result)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "source": {"type": "path", "required": True},
            "commit": {"type": "str", "required": True},
            "build_root": {"type": "path", "required": True},
            "cmake_flags": {"type": "list", "elements": "str", "default": []},
            "targets": {"type": "list", "elements": "str", "required": True},
            "cuda_version": {"type": "str", "default": ""},
            "ccache_dir": {"type": "path"},
            "jobs": {"type": "int", "default": 0},
            "keep": {"type": "int", "default": 2},
            "report": {"type": "bool", "default": False},
            "peer": {"type": "dict", "options": {
                "name": {"type": "str", "required": True},
                "url": {"type": "str", "required": True},
                "stamp": {"type": "str", "required": True},
                "files": {"type": "dict", "required": True},
            }},
        },
        supports_check_mode=True,
    )
    Builder(module).run()


if __name__ == "__main__":
    main()
