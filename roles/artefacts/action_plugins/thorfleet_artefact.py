"""Action plugin: one step of the artefact pipeline for one kind of artefact.

    thorfleet_artefact:
      step: read            # what this host holds of `entries` (check mode: a read)
      entries: [...]        # the pipeline's entries (thorfleet.lib plugin_utils/artefacts.py)

    thorfleet_artefact:
      step: read_source     # delegated to the source a round paired `entry` with: what it
      entry: {...}          # holds of it (check mode), as `held`

    thorfleet_artefact:
      step: copy            # copy `entry` from the host a round paired it with
      entry: {...}          # with `peer` and `peer_entry` (none from the site cache)
      held: {...}           # the source's report, read over Ansible's connection

    thorfleet_artefact:
      step: bundle          # write one thing of a bundle from its upstream (on the
      section: models       # controller, where the bundle is written)
      item: {...}           # as filter thorfleet_bundle_contents gives it
      directory: /srv/bundle
      settings: {...}       # the hubs' endpoints and tokens, skopeo's login, ...

The table of kinds names the module that does the step for each kind; this plugin turns
an entry into that module's arguments and runs it on the task's host (delegated, the
source's). The modules stay their roles' own: the planning role's library is loaded with
the play that plans the artefacts.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils import artefacts


class ActionModule(ActionBase):
    _VALID_ARGS = frozenset(("step", "entries", "entry", "held", "section", "item",
                             "directory", "settings"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        step = self._task.args.get("step")
        try:
            if step == "read":
                return {**result, **self._read(task_vars)}
            if step == "read_source":
                return {**result, **self._read_source(task_vars)}
            if step == "copy":
                return {**result, **self._copy(task_vars)}
            if step == "bundle":
                return {**result, **self._bundle(task_vars)}
        except artefacts.ArtefactError as error:
            raise AnsibleActionFail(str(error)) from None
        raise AnsibleActionFail(f"step: {str(step)[:20]!r} is not read, read_source, copy "
                                "or bundle")

    def _run(self, module, args, task_vars):
        return self._execute_module(module_name=module, module_args=args, task_vars=task_vars)

    def _reading(self):
        if not self._task.check_mode:
            raise AnsibleActionFail("the read steps run in check mode (check_mode: true): "
                                    "they only read")

    def _read(self, task_vars):
        """{reports: {key: the kind's report, or None where the host lacks it}}."""
        self._reading()
        reports = {}
        for entry in self._task.args.get("entries") or []:
            module, args = artefacts.read_call(entry)
            if args is None:  # nothing to ask: held nowhere yet
                reports[entry["key"]] = None
                continue
            answer = self._run(module, args, task_vars)
            if answer.get("failed"):
                return {"failed": True, "reports": reports,
                        "msg": f"{entry['kind']} {entry['dest']}: {module}: "
                               f"{answer.get('msg', 'failed')}"}
            reports[entry["key"]] = artefacts.report(entry, answer)
        return {"changed": False, "reports": reports}

    def _read_source(self, task_vars):
        """{held: the kind's report of what the source holds, or None}."""
        self._reading()
        entry = self._task.args.get("entry")
        module, args = artefacts.source_read_call(entry)
        answer = self._run(module, args, task_vars)
        if answer.get("failed") or answer.get("unreachable"):
            return {**answer, "held": None}
        held = artefacts.source_report(entry, answer)
        # What the source holds that is not what the lock pins is refused here, before
        # this host copies anything.
        refused = artefacts.refusal(entry, held) if held is not None else None
        if refused:
            return {"failed": True, "changed": False, "held": None, "msg": refused}
        return {"changed": False, "held": held}

    def _copy(self, task_vars):
        entry, held = self._task.args.get("entry"), self._task.args.get("held")
        if not isinstance(held, dict):
            raise AnsibleActionFail("held: the source's report of the artefact, as step read "
                                    "gave it")
        # What the lock does not pin was refused by the read of the source (step
        # read_source); the copy module checks every byte against `held`.
        module, args = artefacts.copy_call(entry, held)
        return self._run(module, args, task_vars)

    def _bundle(self, task_vars):
        args = self._task.args
        module, module_args = artefacts.bundle_call(args.get("section"), args.get("item"),
                                                    args.get("directory"),
                                                    args.get("settings"))
        return self._run(module, module_args, task_vars)
