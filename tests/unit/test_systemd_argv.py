"""ExecStart= command lines that systemd reads back token for token."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from tests.conftest import load

systemd = load("filter_plugins/systemd.py")


def test_plain_tokens_stay_as_they_are():
    argv = ["/usr/bin/docker", "run", "--net=host", "-v", "/models:/models", "repo@sha256:ab"]
    assert systemd.systemd_argv(argv) == " ".join(argv)


def test_json_spaces_and_quotes_are_quoted_with_escapes():
    assert systemd.systemd_argv(["--x", '{"a": 1, "b": "c d"}']) == \
        '--x "{\\"a\\": 1, \\"b\\": \\"c d\\"}"'
    assert systemd.systemd_argv(["a\\b"]) == '"a\\\\b"'


def test_specifiers_and_variables_are_not_expanded():
    assert systemd.systemd_argv(["50%", "$HOME", "${X}"]) == '50%% $$HOME "$${X}"'


def test_wrapping_starts_each_flag_on_a_continued_line():
    text = systemd.systemd_argv(["vllm", "serve", "/m", "--port", "8001", "--enforce-eager"],
                                wrap=True)
    assert text == "vllm serve /m \\\n    --port 8001 \\\n    --enforce-eager"


@pytest.mark.parametrize("token", ["a\nExecStartPre=+/bin/sh", "a\rb", "a\x00b", "a\x1bb"])
def test_a_control_character_is_refused_rather_than_written(token):
    with pytest.raises(AnsibleFilterError) as raised:
        systemd.systemd_argv(["/usr/bin/docker", token])
    assert "holds a control character" in str(raised.value)
