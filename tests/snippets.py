"""The inventory and `-e` snippets of the project's Markdown, exactly as written, so that
tests run what the documentation tells users to type.

Kinds of snippet:
- inventory: a fenced YAML block holding a mapping; its first line is a comment naming
  the inventory file it belongs in (`# host_vars/thor01.yml`, or `# hosts.yml` for
  groups of hosts).
- playbook: a fenced YAML block holding a list of plays.
- command: each `ansible-playbook` command line of a shell block that passes `-e`, split
  as the shell splits it (continuation lines joined); its `-e` values are part of it.
- extra_vars: the value of each other `-e`/`--extra-vars` (in prose, in a `thorfleet`
  command), as the shell would pass it (`ngc_images_refresh=true`, a JSON object); a
  placeholder such as `KEY=VALUE` is not one.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# A fenced block, also inside a list item (indented).
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"^[A-Z_]+=[A-Z_.]+$")
# host_vars/ and group_vars/ files, and hosts.yml (groups of hosts: an inventory source).
INVENTORY_FILE = re.compile(r"^#\s*((?:host_vars|group_vars)/[\w./-]+\.yml|hosts\.yml)\b")


@dataclass(frozen=True)
class Snippet:
    kind: str  # inventory, playbook, extra_vars or command
    where: str  # file:line, for messages and test ids
    text: str  # the snippet as written (a command: its argv joined by spaces)
    argv: tuple[str, ...] = ()  # command: the argv; extra_vars: ("-e", value)

    @property
    def inventory_file(self) -> str | None:
        """The inventory file an inventory snippet names in its first line."""
        found = INVENTORY_FILE.match(self.text)
        return found.group(1) if found else None

    def __str__(self) -> str:
        return f"{self.where}: {self.text.splitlines()[0][:70]}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(ROOT.glob("roles/*/README.md"))]


def snippets(files: list[Path] | None = None) -> list[Snippet]:
    found = []
    for path in files or markdown_files():
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        fenced = []
        for block in FENCE.finditer(text):
            fenced.append(block.span())
            line = text.count("\n", 0, block.start()) + 2
            where = f"{name}:{line}"
            language, body = block.group(1), textwrap.dedent(block.group(2))
            if language == "yaml":
                kind = "playbook" if isinstance(yaml.safe_load(body), list) else "inventory"
                found.append(Snippet(kind, where, body))
            elif language == "sh":
                found += _shell_snippets(body, name, line)
        for span in INLINE.finditer(text):
            if any(start <= span.start() < end for start, end in fenced):
                continue
            if re.search(r"(^|\s)(-e|--extra-vars)\s", span.group(1)):
                line = text.count("\n", 0, span.start()) + 1
                found += _extra_vars(_split(span.group(1)), f"{name}:{line}")
    return found


def _shell_snippets(body: str, name: str, first_line: int) -> list[Snippet]:
    found = []
    # The shell joins a line ending in a backslash with the next.
    for offset, command in _command_lines(body):
        where = f"{name}:{first_line + offset}"
        argv = _split(command)
        extra = _extra_vars(argv, where)
        if argv and argv[0] == "ansible-playbook" and extra:
            found.append(Snippet("command", where, " ".join(argv), tuple(argv)))
        else:
            found += extra
    return found


def _command_lines(body: str) -> list[tuple[int, str]]:
    lines, start, pending = [], 0, ""
    for index, line in enumerate(body.splitlines()):
        if not pending:
            start = index
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        lines.append((start, pending + code))
        pending = ""
    return [(offset, line.strip()) for offset, line in lines if line.strip()]


def _split(command: str) -> list[str]:
    """argv as the shell splits it; a synopsis's optional `[-e X=Y]` without its brackets."""
    argv = []
    for token in shlex.split(command):
        if token.startswith("[-"):
            token = token[1:]
        if token.endswith("]") and not token.startswith(("{", "[")):
            token = token[:-1]
        argv.append(token)
    return argv


def _extra_vars(argv: list[str], where: str) -> list[Snippet]:
    found = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-e", "--extra-vars") and not PLACEHOLDER.match(value):
            found.append(Snippet("extra_vars", where, value, ("-e", value)))
    return found


def commands_with(needle: str, path: Path | None = None) -> list[tuple[str, ...]]:
    """The argv of each ansible-playbook command in the README (or `path`) holding needle."""
    return [s.argv for s in snippets([path or ROOT / "README.md"])
            if s.kind == "command" and needle in s.text]
