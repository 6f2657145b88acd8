"""Filters for writing systemd unit files."""

from __future__ import annotations

import re

# Tokens systemd reads back unchanged without quotes.
PLAIN = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def systemd_argv(argv, wrap=False):
    """A command line for ExecStart=: each token read back by systemd exactly as given.

    Tokens with spaces, quotes or backslashes are double-quoted with C escapes; `%` (unit
    specifiers) and `$` (environment variables) are doubled, so nothing is expanded.
    With wrap, each flag starts a continued line, for people reading the unit.
    """
    words = []
    for token in argv:
        token = str(token).replace("%", "%%").replace("$", "$$")
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
