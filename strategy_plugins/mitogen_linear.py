"""Mitogen's linear strategy, found through the installed package rather than a path.

Mitogen ships its Ansible strategies inside ``ansible_mitogen``; this file lets
``strategy = mitogen_linear`` in ansible.cfg resolve on any machine where the
pinned ``mitogen`` package is installed.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
