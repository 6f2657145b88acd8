"""Names in the site cache's registry, as OCI's distribution spec spells them: what the
modules site_cache_fill and site_cache_prune check before a value reaches skopeo, a path
of the storage or the registry's API."""

from __future__ import annotations

import re

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# A repository's path in a registry (nvidia/vllm, ghcr.io/org/img).
PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# A repository with its registry (host[:port]/path).
REPOSITORY = re.compile(rf"[A-Za-z0-9.-]+(?::[0-9]{{1,5}})?/{PATH.pattern}")
