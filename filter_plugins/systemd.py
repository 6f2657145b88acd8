"""Filters for writing systemd unit files."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

# Tokens systemd reads back unchanged without quotes.
PLAIN = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def systemd_argv(argv, wrap=False):
    """A command line for ExecStart=: each token read back by systemd exactly as given.

    Tokens with spaces, quotes or backslashes are double-quoted with C escapes; `%` (unit
    specifiers) and `$` (environment variables) are doubled, so nothing is expanded. A
    token with a control character is refused: preflight refuses such values first, and a
    newline written into a unit would start a directive of its own.
    With wrap, each flag starts a continued line, for people reading the unit.
    """
    words = []
    for token in argv:
        token = str(token)
        if CONTROL.search(token):
            raise AnsibleFilterError(f"systemd_argv: {token!r} holds a control character; "
                                     "no unit is written with it")
        token = token.replace("%", "%%").replace("$", "$$")
        if PLAIN.match(token.replace("%%", "").replace("$$", "")):
            words.append(token)
        else:
            words.append('"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"')
    if not wrap:
        return " ".join(words)
    lines = [words[0]]
    for word in words[1:]:
        if word.startswith("-"):
            lines.append(word)
        else:
            lines[-1] += " " + word
    return " \\\n    ".join(lines)


class FilterModule:
    def filters(self):
        return {"systemd_argv": systemd_argv}
