"""What the container test needs from this machine: podman configured for it, the base image the
Dockerfile starts `FROM` (built with debootstrap, since no registry is reachable), and the CoTrain
image built with this machine's package indexes and CA certificates as the Dockerfile's build arguments.

Images are labelled with a hash of their inputs and reused as they are while the inputs are unchanged.
When they change, the build reuses podman's layer cache: the build arguments are the same on every run
(the machine's local indexes are bind-mounted at fixed paths, never served on a random port), so a
change in src/ rebuilds only the wheel and the image's last layers, while torch and the other
dependencies are rebuilt only when pyproject.toml's requirements change. A fresh machine builds
everything itself. Nothing here belongs in the Dockerfile: an operator's build pulls the real base
image and reaches the real indexes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
INPUTS_LABEL = "org.cotrain.test.inputs"
# What the base image must provide that python:3.11-slim-bookworm does: Python 3.11 with venv and
# ensurepip, CA certificates for pip and apt, and (Priority: required, so in minbase) apt and passwd.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_SUITE = "bookworm"
# what the image is built from (the Dockerfile's COPY lines and what decides them)
IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "src", "deploy/docker")
IMAGE_TAG = "localhost/cotrain:container-test"
DEPENDENCIES_TAG = "localhost/cotrain:container-test-dependencies"  # keeps torch's layers out of prunes


def podman_env() -> dict[str, str]:
    """The environment of every podman and podman-compose call: this directory's containers.conf."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 600, capture: bool = True) -> subprocess.CompletedProcess:
    """Run `podman ARGS`; a failure raises with podman's own output."""
    result = subprocess.run(["podman", *args], env=podman_env(), capture_output=capture, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def podman_compose_path() -> str | None:
    """podman-compose from this venv (pyproject's dev extras; Debian's 1.0.3 breaks host networking)."""
    local = Path(sys.executable).with_name("podman-compose")
    return str(local) if local.exists() else shutil.which("podman-compose")


def missing_tools() -> list[str]:
    """The tools the container test needs that this machine lacks (`make containers` installs them)."""
    missing = [tool for tool in ("podman", "debootstrap", "runc") if shutil.which(tool) is None]
    if podman_compose_path() is None:
        missing.append("podman-compose")
    if not missing and podman("info", check=False, timeout=60).returncode != 0:
        missing.append("a working podman (`podman info` fails)")
    return missing


def image_label(image: str, label: str) -> str | None:
    """A label of a local image, or None when the image is absent."""
    result = podman("image", "inspect", "--format", f"{{{{ index .Labels {label!r} }}}}".replace("'", '"'),
                    image, check=False, timeout=60)
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return None if value in ("", "<no value>") else value


def dockerfile_base_image(dockerfile: Path = REPO / "Dockerfile") -> str:
    """The default of the Dockerfile's BASE_IMAGE argument: the name the base must be tagged as."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError("the Dockerfile has no `ARG BASE_IMAGE=...` default to tag the base image as")
    return match.group(1)


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The machine's Debian mirror (the URI of its stanza for the main suite), for debootstrap."""
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            lines = [line for line in stanza.splitlines() if ":" in line and not line.startswith("#")]
            fields = dict(line.split(":", 1) for line in lines)
            suites = fields.get("Suites", "").split()
            if BASE_SUITE in suites and fields.get("URIs"):
                return fields["URIs"].split()[0].strip()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                return parts[1]
    return "http://deb.debian.org/debian"


def ensure_base_image() -> tuple[str, float]:
    """The Dockerfile's base image, debootstrapped from the machine's mirror when missing or stale.
    Returns the name and the seconds spent building (0 when reused)."""
    name = dockerfile_base_image()
    mirror = debian_mirror()
    key = hashlib.sha256(f"{BASE_SUITE} {mirror} {' '.join(BASE_PACKAGES)} minbase v1".encode()).hexdigest()[:16]
    if image_label(name, INPUTS_LABEL) == key:
        return name, 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cotrain-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE,
                        str(rootfs), mirror], check=True, capture_output=True, timeout=1200)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
             "--change", f"LABEL {INPUTS_LABEL}={key}", "-", name],
            stdin=tar.stdout, env=podman_env(), capture_output=True, text=True, timeout=600)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"podman import of the debootstrapped base failed:\n{imported.stderr}")
    return name, time.monotonic() - started


def pip_config() -> dict[str, str]:
    """This machine's pip settings as pip reads them (files and PIP_* variables), `global.`/`:env:.` stripped."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return settings


BUILD_MOUNTS = "/mnt/host-pip"  # where the machine's local indexes and wheel folders appear to the build's RUN steps


@dataclass
class PackageIndexes:
    """The machine's pip indexes and wheel folders as build arguments. Local folders are bind-mounted
    read-only into the build's RUN steps (`podman build --volume`) at paths derived from pip's settings
    alone, so the build arguments are the same on every run and podman's layer cache holds."""

    build_args: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    ca_bundle: Path | None = None
    torch_spec: str | None = None


def _local_dir(location: str) -> Path | None:
    """The folder of a `file://` URL or plain path, or None for a remote URL."""
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        return None
    path = Path(parsed.path if parsed.scheme == "file" else location)
    return path if path.is_dir() else None


def package_indexes() -> PackageIndexes:
    """This machine's pip settings translated for the build: local folders mounted, remote URLs as they are."""
    config = pip_config()
    indexes = PackageIndexes()

    def translate(locations: str, kind: str) -> list[str]:
        translated = []
        for number, location in enumerate(locations.split()):
            folder = _local_dir(location)
            if folder is None:
                translated.append(location)
                continue
            mount = f"{BUILD_MOUNTS}/{kind}{number}"
            if kind == "links":
                indexes.volumes.append(f"{folder.resolve()}:{mount}:ro")
                translated.append(mount)
            else:  # an index's pages link to its files relatively (../../files/...): mount its parent
                indexes.volumes.append(f"{folder.resolve().parent}:{mount}:ro")
                translated.append(f"file://{mount}/{folder.resolve().name}/")
        return translated

    if config.get("index-url"):
        indexes.build_args["PIP_INDEX_URL"] = " ".join(translate(config["index-url"], "index"))
    if config.get("extra-index-url"):
        indexes.build_args["PIP_EXTRA_INDEX_URL"] = " ".join(translate(config["extra-index-url"], "extra"))
    if config.get("trusted-host"):
        indexes.build_args["PIP_TRUSTED_HOST"] = config["trusted-host"]
    find_links = config.get("find-links", "")
    if find_links:
        indexes.build_args["PIP_FIND_LINKS"] = " ".join(translate(find_links, "links"))
    for location in find_links.split():
        folder = _local_dir(location)
        cpu_wheels = sorted(folder.glob("torch-*+cpu-cp311-*.whl")) if folder else []
        if cpu_wheels:  # the CPU build lies on this disk: take it rather than download.pytorch.org
            indexes.torch_spec = "torch==" + cpu_wheels[-1].name.split("-")[1]
    cert = os.environ.get("PIP_CERT") or config.get("cert") or os.environ.get("SSL_CERT_FILE") \
        or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert and Path(cert).is_file():
        indexes.ca_bundle = Path(cert)
    return indexes


def inputs_hash(root: Path = REPO) -> str:
    """A hash of everything the image is built from (IMAGE_INPUTS), caches and bytecode aside."""
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _copy_context(destination: Path) -> None:
    """The build context: the image's inputs only (a copy, so a CA bundle never lands in the work tree)."""
    for name in IMAGE_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _build_command(context: Path, indexes: PackageIndexes, key: str) -> list[str]:
    """`podman build` of the context with this machine's indexes: the same arguments on every run (the
    inputs' hash is a label, applied last), so every layer whose inputs did not change comes from the cache."""
    args = dict(indexes.build_args)
    if indexes.ca_bundle:
        args["CA_BUNDLE"] = "build-ca.pem"
    if indexes.torch_spec:
        args.update(TORCH_SPEC=indexes.torch_spec, TORCH_INDEX_URL="")
    command = ["build", "--network", "host", "--format", "docker", "--layers", "--label", f"{INPUTS_LABEL}={key}",
               "-f", str(context / "Dockerfile")]
    for volume in indexes.volumes:
        command += ["--volume", volume]
    for name, value in sorted(args.items()):
        command += ["--build-arg", f"{name}={value}"]
    return command


def ensure_image(tag: str = IMAGE_TAG, log: Path | None = None) -> tuple[str, float]:
    """The CoTrain image: reused as it is while its inputs' hash is unchanged, else built with podman's layer
    cache (a change in src/ rebuilds only the wheel and the last layer). Returns the tag and the seconds spent
    building (0 when reused)."""
    key = inputs_hash()
    if image_label(tag, INPUTS_LABEL) == key:
        return tag, 0.0
    started = time.monotonic()
    indexes = package_indexes()
    output = []
    with tempfile.TemporaryDirectory(prefix="cotrain-context-") as tmp:
        context = Path(tmp)
        _copy_context(context)
        if indexes.ca_bundle:
            shutil.copy(indexes.ca_bundle, context / "build-ca.pem")
        command = _build_command(context, indexes, key)
        # the image, then its dependencies stage tagged too (all cached: seconds), so that pruning the
        # build's leftovers below keeps the layers with torch for the next build
        for extra in (["-t", tag], ["--target", "dependencies", "-t", DEPENDENCIES_TAG]):
            result = podman(*command[:1], *extra, *command[1:], str(context), check=False, timeout=1800)
            output.append(result.stdout + result.stderr)
            if result.returncode != 0:
                if log is not None:
                    log.write_text("\n".join(output))
                raise RuntimeError(f"podman build failed ({result.returncode}):\n{output[-1][-6000:]}")
    if log is not None:
        log.write_text("\n".join(output))
    # the image a rebuild replaced and the wheel stage's leftovers (all labelled, untagged and unused); the
    # layers the new image and the dependencies stage share stay
    podman("image", "prune", "--force", "--filter", f"label={INPUTS_LABEL}", check=False, timeout=300)
    return tag, time.monotonic() - started


if __name__ == "__main__":  # `python -m tests.containers.harness`: build (or reuse) both images, with timings
    base, base_s = ensure_base_image()
    print(f"base image {base}: {'reused' if not base_s else f'built in {base_s:.0f} s'}", flush=True)
    image, image_s = ensure_image(log=Path(tempfile.gettempdir()) / "cotrain-image-build.log")
    print(f"image {image}: {'reused' if not image_s else f'built in {image_s:.0f} s'}", flush=True)
