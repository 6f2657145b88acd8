"""The lab profile (src/thorfleet/lab/profile.yml), committed as YAML: it points the
roles at the lab's own upstreams and differs from a real Thor's settings only where
DESIGN.md allows; every value it sets is a setting some role has."""

from __future__ import annotations

import hashlib

import yaml

from tests.conftest import CATALOGUE, ROOT
from thorfleet.lab import config
from thorfleet.lab import hub as lab_hub
from thorfleet.lab.inventory import PROFILE

LAB = yaml.safe_load(PROFILE.read_text())


def test_the_profile_points_at_the_lab_upstreams_it_runs():
    assert LAB["thorfleet_source_mirror"] == config.SOURCE_MIRROR
    assert LAB["thorfleet_hf_endpoint"] == config.HF_MIRROR
    assert LAB["thorfleet_modelscope_endpoint"] == config.MODELSCOPE
    assert LAB["thorfleet_file_mirror"] == config.FILE_MIRROR
    assert LAB["thorfleet_registry_mirror"] == config.REGISTRY
    assert LAB["thorfleet_ngc_api_key"] == config.REGISTRY_PASSWORD
    assert LAB["service_verify_image_url"] == f"{config.FILE_MIRROR}/verify.png"
    assert LAB["model_store_pip_env"] == {"PIP_NO_INDEX": "1",
                                          "PIP_FIND_LINKS": f"{config.FILE_MIRROR}/wheels/",
                                          "PIP_TRUSTED_HOST": config.GATEWAY}


def test_the_lab_template_is_pinned_in_place_of_the_published_one():
    url = CATALOGUE["files"]["qwen3_nonthinking.jinja"]["url"]
    assert LAB["thorfleet_file_checksums"] == {
        url: hashlib.sha256(lab_hub.NONTHINKING_TEMPLATE.encode()).hexdigest()}


def test_every_value_is_a_setting_of_a_role():
    settings = set()
    for path in ROOT.glob("roles/*/defaults/main.yml"):
        settings |= set(yaml.safe_load(path.read_text()) or {})
    assert set(LAB) <= settings, set(LAB) - settings
    assert LAB["thorfleet_lab"] is True and LAB["thorfleet_container_runtime"] == "runc"
