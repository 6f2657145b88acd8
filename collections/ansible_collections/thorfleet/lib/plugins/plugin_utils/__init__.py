"""Code shared by thorfleet's filter plugins (filter_plugins/) and the artefact pipeline's
action plugin (roles/artefacts): the collection thorfleet.lib, which Ansible finds in
collections/ beside site.yml (and ansible.cfg names, for the playbooks under
playbooks/), so that the plugins import it as Ansible's own plugin_utils, with no path of
their own."""
