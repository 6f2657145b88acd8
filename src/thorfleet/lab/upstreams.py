"""What the lab serves its hosts in place of the internet: an image registry as nvcr.io is
(TLS, a login) holding the vLLM and SGLang stand-ins under NGC's paths, a git server with
the engines' sources, a Hugging Face mirror, the ModelScope stand-in and a file mirror."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from thorfleet import catalogue
from thorfleet.lab import hub as lab_hub
from thorfleet.lab import images as lab_images
from thorfleet.lab.config import (
    CONTAINERS_CERTS,
    FILE_MIRROR,
    GATEWAY,
    HF_MIRROR,
    HOST_PYTHON,
    MODELSCOPE,
    REGISTRY,
    REGISTRY_AUTH,
    REGISTRY_ISSUER,
    REGISTRY_PASSWORD,
    REGISTRY_SERVICE,
    REGISTRY_USER,
    SOURCE_MIRROR,
    SOURCES,
    LabError,
    run,
)
from thorfleet.lab.hub import GIT_IDENTITY


class Upstreams:
    """Each started once and left running until `down`."""

    def _ensure_registry(self, log) -> None:
        """The lab registry, as nvcr.io is: TLS (a lab CA the hosts trust) and a login,
        through a token service (registry_auth.py) as nvcr.io's."""
        if self._pid("registry") is not None:
            return
        home = self.state / "registry"
        (home / "data").mkdir(parents=True, exist_ok=True)
        self._ensure_lab_ca(home)
        self._ensure_registry_auth(home)
        config = home / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {home / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {REGISTRY}\n"
            f"  tls:\n    certificate: {home / 'registry.crt'}\n    key: {home / 'registry.key'}\n"
            f"auth:\n  token:\n    realm: https://{REGISTRY_AUTH}/proxy_auth\n"
            f"    service: {REGISTRY_SERVICE}\n    issuer: {REGISTRY_ISSUER}\n"
            f"    rootcertbundle: {home / 'token-signer.crt'}\n"
        )
        self._start_process("registry", ["docker-registry", "serve", str(config)])
        if not lab_hub.answers_http(f"https://{REGISTRY}/v2/",
                                    lambda: self._pid("registry") is not None,
                                    cafile=self.lab_ca):
            raise LabError(f"the lab registry did not answer on {REGISTRY}: see "
                           f"{self.state / 'run' / 'registry'}.log")
        # This machine, as a site's connected machine trusts its mirror: bundle create's
        # skopeo copies from the lab registry.
        CONTAINERS_CERTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.lab_ca, CONTAINERS_CERTS / "ca.crt")
        log(f"registry answers on {REGISTRY} (TLS, login {REGISTRY_USER})")

    def _ensure_registry_auth(self, home: Path) -> None:
        """The registry's token service, signing with a key of its own."""
        if not (home / "token-signer.crt").exists():
            run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-keyout", str(home / "token-signer.key"), "-out",
                 str(home / "token-signer.crt"), "-subj", "/CN=thorfleet lab token signer"])
        if self._pid("registry-auth") is not None:
            return
        config = home / "registry-auth.json"
        config.write_text(json.dumps({
            "host": GATEWAY, "port": int(REGISTRY_AUTH.rsplit(":", 1)[1]),
            "tls_certificate": str(home / "registry.crt"), "tls_key": str(home / "registry.key"),
            "key": str(home / "token-signer.key"), "certificate": str(home / "token-signer.crt"),
            "user": REGISTRY_USER, "password": REGISTRY_PASSWORD,
            "issuer": REGISTRY_ISSUER, "service": REGISTRY_SERVICE}))
        self._start_process("registry-auth", [sys.executable, "-m", "thorfleet.lab.registry_auth",
                                              "--config", str(config)])
        self._wait_http("registry-auth", f"https://{REGISTRY_AUTH}/", cafile=self.lab_ca)

    @property
    def lab_ca(self) -> Path:
        """The lab's certificate authority, which the hosts' Docker trusts."""
        return self.state / "registry" / "ca.crt"

    def _ensure_lab_ca(self, home: Path) -> None:
        if (home / "registry.crt").exists():
            return
        days = ["-days", "3650"]
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             str(home / "ca.key"), "-out", str(home / "ca.crt"), *days,
             "-subj", "/CN=thorfleet lab CA"])
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout",
             str(home / "registry.key"), "-out", str(home / "registry.csr"),
             "-subj", f"/CN={GATEWAY}"])
        (home / "san.ext").write_text(f"subjectAltName=IP:{GATEWAY}\n")
        run(["openssl", "x509", "-req", "-in", str(home / "registry.csr"), "-CA",
             str(home / "ca.crt"), "-CAkey", str(home / "ca.key"), "-CAcreateserial",
             "-out", str(home / "registry.crt"), *days, "-extfile", str(home / "san.ext")])

    def registry(self) -> lab_images.Registry:
        return lab_images.Registry(REGISTRY, REGISTRY_USER, REGISTRY_PASSWORD, self.lab_ca)

    def container_engines(self) -> dict[str, tuple[str, str]]:
        """{engine: (repository, tag)} of the catalogue's container images, the registry's
        host left out: where the lab registry serves each engine's stand-in."""
        found = {}
        for engine, spec in catalogue.load(self.project)["engines"].items():
            if spec["kind"] == "container":
                name, tag = spec["image"].rsplit(":", 1)
                found[engine] = (name.split("/", 1)[1], tag)
        return found

    def standin_layer(self) -> bytes:
        """The one layer of the engine stand-in images (the lab root file system's Python
        and the stand-in), the same bytes for the same inputs."""
        if getattr(self, "_standin_layer", None) is None:
            self._standin_layer = lab_images.build_layer(self._ensure_rootfs(lambda _msg: None))
        return self._standin_layer

    def push_standin(self, engine: str, tag: str) -> str:
        """Push the stand-in of `engine` ("vllm", "sglang") under the repository of its
        image in the catalogue (nvidia/vllm), with `tag`; returns the digest."""
        repository, _tag = self.container_engines()[engine]
        parts = lab_images.image(self.standin_layer(), engine, tag)
        return self.registry().push(repository, tag, parts)

    def _ensure_images(self, log) -> None:
        """The stand-ins, under the paths and tags of the catalogue's NGC images."""
        for engine, (repository, tag) in self.container_engines().items():
            digest = self.push_standin(engine, tag)
            log(f"stand-in pushed as {REGISTRY}/{repository}:{tag} ({digest[:19]})")

    def _ensure_sources(self, log) -> None:
        for engine in SOURCES:
            repo = self.source_repo(engine)
            if not repo.exists():
                cached = self.cached_source(engine, log)
                repo.parent.mkdir(parents=True, exist_ok=True)
                run(["git", "clone", "-q", "--bare", str(cached), str(repo)])
        if self._pid("git-daemon") is None:
            git = self.state / "git"
            self._start_process("git-daemon", [
                # --verbose: each client and what it asked for, in the log (tests count
                # which hosts fetched a source).
                "git", "daemon", "--verbose", "--reuseaddr", "--export-all",
                f"--base-path={git}",
                f"--listen={GATEWAY}", str(git)])
            log(f"sources served at {SOURCE_MIRROR}/<engine>.git")

    def source_repo(self, engine: str) -> Path:
        """The lab's git repository of an engine (tests commit to it, as upstream would)."""
        return self.state / "git" / f"{engine}.git"

    def commit_to_source(self, engine: str, path: str, line: str, tag: str) -> str:
        """Add a line to a file of an engine's lab repository, commit, tag; the new commit."""
        with tempfile.TemporaryDirectory() as work:
            run(["git", "clone", "-q", str(self.source_repo(engine)), work])
            with open(Path(work) / path, "a") as source:
                source.write(f"\n{line}\n")
            env = {**os.environ, **GIT_IDENTITY}
            for argv in (["commit", "-qam", f"lab: {tag}"], ["tag", "-f", tag],
                         ["push", "-q", "-f", "origin", f"refs/tags/{tag}"]):
                run(["git", "-C", work, *argv], env=env)
            return run(["git", "-C", work, "rev-parse", "HEAD"]).stdout.strip()

    def source_file(self, engine: str, ref: str, path: str) -> bytes:
        """A file of an engine's source at a ref, from the lab's repository."""
        return subprocess.run(["git", "--git-dir", str(self.source_repo(engine)), "show",
                               f"{ref}:{path}"], capture_output=True, check=True,
                              timeout=60).stdout

    def cached_source(self, engine: str, log=print) -> Path:
        """A bare repository of the sdist's tree, tagged, built once per machine."""
        source = SOURCES[engine]
        name = f"{engine}-{source.requirement.replace('==', '-')}.git"
        cached = self.cache / "sources" / name
        if (cached / "thorfleet-complete").exists():
            return cached
        downloads = self.cache / "sources" / "sdists"
        downloads.mkdir(parents=True, exist_ok=True)
        package, version = source.requirement.split("==")
        log(f"fetching {source.requirement} (sdist) for the {engine} sources")
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--no-binary", package, source.requirement, "-d", str(downloads)])
        prefix = package.replace("-", "_").lower()
        sdist = next(p for p in downloads.glob("*.tar.gz")
                     if p.name.lower().replace("-", "_").startswith(f"{prefix}_{version}"))
        with tempfile.TemporaryDirectory() as tmp:
            run(["tar", "--no-same-owner", "-xzf", str(sdist), "-C", tmp])
            tree = next(Path(tmp).iterdir()) / source.subdir
            # A vendored submodule carries a .git file pointing at its parent's repository.
            (tree / ".git").unlink(missing_ok=True)
            env = {**os.environ, **GIT_IDENTITY}
            for argv in (["git", "init", "-q", "-b", "master"], ["git", "add", "-A", "-f"],
                         ["git", "commit", "-q", "-m", f"{engine} from {source.requirement}"],
                         ["git", "tag", source.tag]):
                run(argv, cwd=tree, env=env)
            shutil.rmtree(cached, ignore_errors=True)
            run(["git", "clone", "-q", "--bare", str(tree), str(cached)])
        (cached / "thorfleet-complete").write_text(source.requirement + "\n")
        return cached

    def hub(self) -> lab_hub.LabHub:
        return lab_hub.LabHub(self.state, self.cache, self.source_file)

    def _ensure_hubs(self, log) -> None:
        hub = self.hub()
        hub.ensure()
        hub.write_file_server(self.state / "www")
        # The image the verify phase's vision check sends by URL, as a LAN copy would be.
        shutil.copyfile(self.project / "roles/service_verify/files/verify.png",
                        self.state / "www" / "verify.png")
        self._ensure_wheels(self.state / "www" / "wheels", log)
        home = self.state / "hub"
        if self._pid("hf-mirror") is None:
            config = home / "olah.toml"
            config.write_text(
                "[basic]\n"
                f'host = "{GATEWAY}"\nport = {urlsplit(HF_MIRROR).port}\n'
                f'repos-path = "{home / "olah-cache"}"\n'
                f'mirrors-path = ["{hub.hub_root("huggingface")}"]\n'
                f'mirror-netloc = "{urlsplit(HF_MIRROR).netloc}"\n'
                f'mirror-lfs-netloc = "{urlsplit(HF_MIRROR).netloc}"\n'
                "[accessibility]\noffline = true\n")
            self._start_process("hf-mirror", [sys.executable, "-m", "olah.server", "-c",
                                              str(config)], cwd=home)  # it logs to ./logs
        if self._pid("modelscope") is None:
            config = home / "modelscope-standin.json"
            config.write_text(json.dumps({
                "root": str(hub.hub_root("modelscope")), "host": GATEWAY,
                "port": urlsplit(MODELSCOPE).port,
                "gated": {"thorfleet-lab/gated": lab_hub.GATED_TOKEN},
                "hostile": lab_hub.HOSTILE,
                # About what olah serves at here, so an interrupted download is
                # interrupted part-way in tests, as on a real link.
                "rate": lab_hub.MODELSCOPE_RATE}))
            self._start_process("modelscope", [sys.executable, "-m",
                                               "thorfleet.modelscope_standin", "--config",
                                               str(config)])
        if self._pid("file-mirror") is None:
            self._start_process("file-mirror", [
                sys.executable, "-m", "http.server", "--bind", GATEWAY,
                "--directory", str(self.state / "www"), str(urlsplit(FILE_MIRROR).port)])
        for service, probe in (("hf-mirror", f"{HF_MIRROR}/api/models/Qwen/Qwen3-8B/revision/main"),
                               ("modelscope", f"{MODELSCOPE}/api/v1/models/Qwen/none/revisions"),
                               ("file-mirror", f"{FILE_MIRROR}/")):
            self._wait_http(service, probe)
        log(f"models served at {HF_MIRROR} (Hugging Face mirror) and {MODELSCOPE} "
            f"(ModelScope stand-in), files at {FILE_MIRROR}")

    def _ensure_wheels(self, target: Path, log) -> None:
        """The hub clients the model_store role installs on hosts, as a PyPI mirror of an
        air-gapped site would serve them (the hosts install with --no-index)."""
        defaults = yaml.safe_load((self.project / "roles/model_store/defaults/main.yml")
                                  .read_text())
        wanted = defaults["model_store_pip_packages"]
        cached = self.cache / "wheels" / hashlib.sha256(
            "\n".join([*wanted, HOST_PYTHON]).encode()).hexdigest()[:12]
        if not (cached / "thorfleet-complete").exists():
            log(f"fetching wheels for the hosts: {' '.join(wanted)}")
            cached.mkdir(parents=True, exist_ok=True)
            run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                 "--python-version", HOST_PYTHON, "-d", str(cached), *wanted])
            (cached / "thorfleet-complete").write_text("\n".join(wanted) + "\n")
        target.mkdir(parents=True, exist_ok=True)
        for wheel in cached.glob("*.whl"):
            if not (target / wheel.name).exists():
                lab_hub.link_or_copy(wheel, target / wheel.name)

    def _wait_http(self, service: str, url: str, cafile: Path | None = None) -> None:
        if not lab_hub.answers_http(url, lambda: self._pid(service) is not None,
                                    cafile=cafile):
            raise LabError(f"the lab's {service} did not answer at {url}: see "
                           f"{self.state / 'run' / service}.log")
