"""The deployment files, checked without a container engine: the Dockerfile, .dockerignore,
compose.yaml with .env.example, and the Kubernetes manifests (every document, and the production
overlay rendered, against the Kubernetes 1.30 schemas). The scripts the image runs (its health check,
compose's secrets-to-variables entry point, the one-shot migration) run here for real.

A variable named in these files must be one the code declares (its settings classes), so a typo
or an invented `*_FILE` variable fails here rather than being silently ignored in production."""

from __future__ import annotations

import copy
import fnmatch
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import missing_service

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
K8S = REPO / "deploy" / "k8s"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
ENV_FROM_SECRETS = REPO / "deploy" / "docker" / "env-from-secrets.sh"
COTRAIN_SERVICES = ("migrate", "api", "worker", "gpu-worker")
BUILD_ARGS = ("BASE_IMAGE", "TORCH_SPEC", "TORCH_INDEX_URL", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
              "PIP_TRUSTED_HOST", "CA_BUNDLE")
PROXY_VARIABLES = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"}  # pip's own, passed to the build
DHT_PORT = 31337
K8S_VERSION = "1.30"


# ---- the variables the code reads ----

def declared_variables() -> set[str]:
    """Every variable a settings class declares (the README's tables are generated from the same)."""
    from cotrain.server.env_reference import documented_variables

    return set(documented_variables())


def undeclared(names: set[str], allowed: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The names the code does not read (and `allowed` does not list), sorted."""
    declared = declared_variables()
    return sorted(name for name in names if name not in declared and name not in allowed
                  and not name.startswith("STACK_"))


def interpolated(text: str) -> set[str]:
    """The variables compose interpolates: ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?msg}."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example line {line!r} is not NAME=VALUE"
            pairs[name.strip()] = value
    return pairs


def test_the_variable_check_catches_a_wrong_name() -> None:
    """The check the tests below rely on: an invented variable is reported, a real one is not."""
    assert undeclared({"COTRAIN_ADMIN_TOKEN", "DATABASE_URL", "COTRAIN_TREASURY_KEY_FILE"}) == []
    assert undeclared({"COTRAIN_ADMIN_TOKEN_FILE", "COTRAIN_LEDGER_KEY_FILE", "DATABASE_URI"}) == [
        "COTRAIN_ADMIN_TOKEN_FILE", "COTRAIN_LEDGER_KEY_FILE", "DATABASE_URI"]


# ---- Dockerfile ----

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments); continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append(pending + raw)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for instruction, rest in stage if instruction == name]


def test_dockerfile_is_multi_stage_with_a_non_root_final_stage() -> None:
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile needs a builder stage and a final stage"
    assert instructions(preamble, "ARG") == ["BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm"]
    stage_names = [instructions(stage, "FROM")[0].split()[-1] for stage in stages]
    assert all(instructions(stage, "FROM")[0].startswith(("${BASE_IMAGE} ", *(f"{n} " for n in stage_names)))
               for stage in stages), "every stage starts from BASE_IMAGE or an earlier stage"
    final = stages[-1]
    users = instructions(final, "USER")
    assert users, "the final stage sets no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert "--from=dependencies /opt/venv /opt/venv" in " ".join(instructions(final, "COPY"))


def stage_named(name: str) -> list[tuple[str, str]]:
    """The Dockerfile stage `FROM ... AS name`."""
    for stage in dockerfile_stages()[1:]:
        if instructions(stage, "FROM")[0].split()[-1] == name:
            return stage
    raise AssertionError(f"the Dockerfile has no stage {name!r}")


def test_dockerfile_installs_the_requirements_before_any_source_so_a_commit_rebuilds_in_seconds() -> None:
    """torch and the rest come from pyproject.toml's requirements alone; src/ is copied only after them, and
    the final image installs CoTrain's wheel without dependencies after copying the venv."""
    for name in ("requirements", "dependencies"):
        copied = " ".join(instructions(stage_named(name), "COPY"))
        assert "src" not in copied.split() and "README.md" not in copied, f"the {name} stage copies sources"
    assert "project-requirements.py" in " ".join(instructions(stage_named("requirements"), "RUN"))
    assert "build-venv.sh dependencies" in instructions(stage_named("dependencies"), "RUN")[-1]
    wheel = stage_named("wheel")
    assert instructions(wheel, "FROM")[0] == "dependencies AS wheel"
    assert "src /src/src" in instructions(wheel, "COPY") and "build-venv.sh wheel" in instructions(wheel, "RUN")[-1]
    final = dockerfile_stages()[-1]
    order = [(instruction, rest) for instruction, rest in final if instruction in ("COPY", "RUN")]
    venv_at = order.index(("COPY", "--from=dependencies /opt/venv /opt/venv"))
    wheel_at = order.index(("COPY", "--from=wheel /wheels /tmp/wheels"))
    assert venv_at < wheel_at and "--no-deps --no-index" in order[wheel_at + 1][1], order


def test_project_requirements_lists_the_build_backend_and_the_dependencies(tmp_path: Path) -> None:
    import tomllib

    script = str(REPO / "deploy" / "docker" / "project-requirements.py")
    done = subprocess.run([sys.executable, script, str(REPO / "pyproject.toml")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert done.stdout.splitlines() == project["build-system"]["requires"] + project["project"]["dependencies"]
    (tmp_path / "pyproject.toml").write_text("[project\n")
    broken = subprocess.run([sys.executable, script, str(tmp_path / "pyproject.toml")], capture_output=True,
                            text=True, timeout=30)
    assert broken.returncode == 1 and broken.stderr.startswith("error: cannot read the requirements of ")
    assert "Traceback" not in broken.stderr and broken.stderr.count("\n") == 1


def test_dockerfile_runs_cotrain_with_a_health_check_and_a_volume() -> None:
    final = dockerfile_stages()[-1]
    assert json.loads(instructions(final, "ENTRYPOINT")[-1]) == ["cotrain"]
    assert json.loads(instructions(final, "CMD")[-1]) == ["up", "--host", "0.0.0.0"]
    healthcheck = instructions(final, "HEALTHCHECK")[-1]
    assert "/opt/cotrain/healthcheck.py" in healthcheck and "CMD" in healthcheck
    assert json.loads(instructions(final, "VOLUME")[-1]) == ["/data"]
    env = " ".join(instructions(final, "ENV"))
    assert "COTRAIN_HOME=/data" in env and "COTRAIN_LOG_FORMAT=json" in env
    assert f"COTRAIN_DHT_HOST_MADDRS=/ip4/0.0.0.0/tcp/{DHT_PORT}" in env
    assert set(instructions(final, "EXPOSE")[-1].split()) == {"8000", str(DHT_PORT)}


def test_dockerfile_takes_the_build_arguments_and_keeps_the_ca_out_of_the_image() -> None:
    preamble, *stages = dockerfile_stages()
    args = {arg.split("=")[0] for stage in (preamble, *stages) for arg in instructions(stage, "ARG")}
    assert set(BUILD_ARGS) <= args, f"missing build arguments: {set(BUILD_ARGS) - args}"
    assert dict(arg.split("=", 1) for arg in instructions(stage_named("dependencies"), "ARG"))["TORCH_SPEC"] \
        == "torch==2.13.0"
    final = stages[-1]
    final_text = " ".join(rest for _, rest in final)
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CA_BUNDLE", "PIP_INDEX_URL"):
        assert name not in final_text, f"{name} reaches the final image"
    env_names = set(re.findall(r"\b(COTRAIN_[A-Z_]+)=", " ".join(instructions(final, "ENV"))))
    assert undeclared(env_names) == []
    for copy_args in (rest for stage in stages for rest in instructions(stage, "COPY")):
        if "--from=" in copy_args:
            continue
        for source in copy_args.split()[:-1]:
            if "$" not in source:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the build context"


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Whether `path` (relative to the context) is left out, by .dockerignore's last matching pattern."""
    ignored = False
    for pattern in dockerignore_patterns():
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!")
        candidates = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, candidate) for candidate in candidates for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_out_the_venv_git_and_secrets_but_not_the_sources() -> None:
    for path in (".venv/bin/python", ".git/config", "secrets/admin_token", ".env", "home/keys/ledger.key",
                 "tests/test_deploy_files.py", "bench/results/x.json", "docs/screenshots/a.png",
                 "src/cotrain/__pycache__/x.pyc", "tls/server-key.pem"):
        assert dockerignored(path), f".dockerignore lets {path} into the build context"
    for path in ("pyproject.toml", "README.md", "src/cotrain/cli/__init__.py", "src/cotrain/ui/static/app.css",
                 "deploy/docker/healthcheck.py", "deploy/docker/no-ca.pem", ".env.example", "ca.pem"):
        assert not dockerignored(path), f".dockerignore leaves out {path}, which the build needs"


# ---- compose.yaml and .env.example ----

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_compose_services_have_health_checks_limits_and_valid_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "gpu-worker"} <= set(services)
    assert one_shot(services["migrate"]) and "healthcheck" not in services["migrate"]
    for name, service in services.items():
        if not one_shot(service):
            assert service.get("healthcheck", {}).get("test"), f"{name} runs for long and has no healthcheck"
            limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
            assert {"cpus", "memory"} <= set(limits), f"{name} has no cpu and memory limits"
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on {target}, which is no service"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy: it has no check"
            else:
                assert condition == "service_completed_successfully" and one_shot(services[target]), (name, target)
    # podman 4.3 cannot start a service whose completed dependency has dependencies of its own: migrate waits
    # for PostgreSQL itself (`cotrain db upgrade --wait`)
    assert "depends_on" not in services["migrate"]
    for name in ("api", "worker", "gpu-worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_publishes_the_api_and_the_dht_and_shares_cotrain_home(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ports = services["api"]["ports"]
    assert any(port.endswith(":8000") for port in ports)
    assert any(port.endswith(f":{DHT_PORT}/tcp") for port in ports)
    assert services["api"]["environment"]["COTRAIN_DHT_HOST_MADDRS"] == f"/ip4/0.0.0.0/tcp/{DHT_PORT}"
    assert services["api"]["environment"]["COTRAIN_EMBEDDED_WORKER"] == "0"
    for name in ("api", "worker", "gpu-worker"):
        assert "cotrain-home:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["COTRAIN_HOME"] == "/data"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], f"{name} mounts an undeclared volume {volume}"
    assert services["worker"]["environment"]["COTRAIN_GPUS"] == ""  # set and empty: a CPU worker


def test_compose_gpu_worker_is_a_profile_with_an_nvidia_reservation(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu["command"] == ["worker"] and compose["services"]["worker"]["command"] == ["worker"]
    assert "COTRAIN_GPUS" not in gpu["environment"]  # detected with nvidia-smi


def test_compose_secrets_are_files_the_example_names_and_git_ignores(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    assert set(declared) == {"admin_token", "ledger_key", "treasury_key"}
    example = ENV_EXAMPLE.read_text()
    for name, secret in declared.items():
        path = secret["file"]
        assert path == f"./secrets/{name}"
        assert f"secrets/{name}" in example, f".env.example does not tell to create {path}"
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
        assert ignored, f"git would commit {path}"
    for name, service in compose["services"].items():
        for used in service.get("secrets", []):
            assert used in declared, f"{name} uses the undeclared secret {used}"
    api = compose["services"]["api"]
    assert set(api["secrets"]) == set(declared)
    assert api["environment"]["COTRAIN_TREASURY_KEY_FILE"] == "/run/secrets/treasury_key"
    # the admin token and ledger key have no file setting: the entry point turns the files into variables
    assert api["entrypoint"] == ["cotrain-env-from-secrets", "cotrain"]


def test_compose_and_env_example_name_only_variables_the_code_reads(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    services = compose["services"]
    for name in COTRAIN_SERVICES:
        assert undeclared(set(services[name]["environment"])) == [], f"{name}'s environment"
    assert undeclared(interpolated(text), PROXY_VARIABLES) == [], "compose.yaml interpolates unknown variables"
    assert undeclared(set(env_example())) == [], ".env.example sets unknown variables"


def test_env_example_and_compose_agree(compose: dict[str, Any]) -> None:
    used, example = interpolated(COMPOSE.read_text()), env_example()
    stack = {name for name in used if name.startswith("STACK_")}
    assert stack == {name for name in example if name.startswith("STACK_")}, "STACK_* of compose vs .env.example"
    assert set(example) - used == set(), f".env.example sets variables compose.yaml never reads: {set(example) - used}"
    assert "STACK_POSTGRES_PASSWORD:?" in COMPOSE.read_text()  # no default password


def test_compose_migration_command_migrates_a_database(compose: dict[str, Any], tmp_path: Path) -> None:
    """The one-shot service's command, run here against a fresh SQLite database."""
    migrate = compose["services"]["migrate"]
    assert migrate["entrypoint"] == ["cotrain"] and migrate["command"] == ["db", "upgrade", "--wait", "120"]
    database = tmp_path / "cotrain.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "COTRAIN_HOME": str(tmp_path)}
    cotrain = str(Path(sys.executable).with_name("cotrain"))
    done = subprocess.run([cotrain, *migrate["command"]], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("database migrated from empty to ")
    with sqlite3.connect(database) as connection:
        revisions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert revisions and {"training_sessions", "workers"} <= tables


def test_env_from_secrets_turns_secret_files_into_variables(tmp_path: Path) -> None:
    (tmp_path / "admin_token").write_text("token-from-file\n")
    (tmp_path / "ledger_key").write_text("")  # empty: the variable stays unset
    script = [str(ENV_FROM_SECRETS), sys.executable, "-c",
              "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
              "('COTRAIN_ADMIN_TOKEN', 'COTRAIN_LEDGER_KEY')}))"]
    env = {key: value for key, value in os.environ.items() if key not in ("COTRAIN_ADMIN_TOKEN", "COTRAIN_LEDGER_KEY")}
    done = subprocess.run(script, env={**env, "SECRETS_DIR": str(tmp_path)}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"COTRAIN_ADMIN_TOKEN": "token-from-file", "COTRAIN_LEDGER_KEY": None}
    # a variable the operator set wins over the file
    done = subprocess.run(script, env={**env, "SECRETS_DIR": str(tmp_path), "COTRAIN_ADMIN_TOKEN": "set"},
                          capture_output=True, text=True, timeout=30)
    assert json.loads(done.stdout)["COTRAIN_ADMIN_TOKEN"] == "set"
    assert "token-from-file" not in done.stdout + done.stderr


def fake_python(bin_dir: Path, log: Path) -> None:
    """A `python3` whose `-m venv DIR` makes a venv whose python logs its arguments and pip's settings."""
    bin_dir.mkdir()
    logger = (f'#!/bin/sh\nprintf "%s\\n" "ARGS $*" "PIP_INDEX_URL=${{PIP_INDEX_URL-unset}}" '
              f'"PIP_CERT=${{PIP_CERT-unset}}" >> {log}\n')
    (bin_dir / "python3").write_text(
        '#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exit 3\nmkdir -p "$3/bin"\n'
        f"cat > \"$3/bin/python\" <<'EOF'\n{logger}EOF\n"
        'printf "#!/bin/sh\\nexit 0\\n" > "$3/bin/cotrain"\nchmod +x "$3/bin/python" "$3/bin/cotrain"\n')
    (bin_dir / "python3").chmod(0o755)


def run_build_venv(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """deploy/docker/build-venv.sh ARGS with a logging python: what it asked pip, and with which settings."""
    log, build = tmp_path / "pip.log", tmp_path / "build"
    if not (tmp_path / "bin").exists():
        fake_python(tmp_path / "bin", log)
    build.mkdir(exist_ok=True)
    (tmp_path / "system-ca.pem").write_text("SYSTEM CA\n")
    base = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "BUILD_DIR": str(build), "TORCH_SPEC": "torch==2.13.0",
            "SYSTEM_CA_FILE": str(tmp_path / "system-ca.pem")}
    done = subprocess.run(["sh", str(REPO / "deploy" / "docker" / "build-venv.sh"), *args],
                          env={**base, **env}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_build_venv_installs_cpu_torch_then_the_requirements_then_builds_the_wheel_alone(tmp_path: Path) -> None:
    venv = str(tmp_path / "venv")
    lines = run_build_venv(tmp_path, "dependencies", venv, "/tmp/requirements.txt",
                           TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu", PIP_INDEX_URL="")
    calls = [line for line in lines if line.startswith("ARGS")]
    assert calls == ["ARGS -m pip install --quiet --upgrade pip",
                     "ARGS -m pip install --quiet --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
                     "ARGS -m pip install --quiet --requirement /tmp/requirements.txt"]
    assert "PIP_INDEX_URL=unset" in lines and "PIP_CERT=unset" in lines  # an empty build argument is no index
    lines = run_build_venv(tmp_path, "wheel", venv, "/src", "/wheels")
    assert [line for line in lines if line.startswith("ARGS")][len(calls):] == [
        "ARGS -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels /src"]
    wrong = subprocess.run(["sh", str(REPO / "deploy" / "docker" / "build-venv.sh"), "everything", venv],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and wrong.stderr.startswith("usage: build-venv.sh dependencies")


def test_build_venv_uses_the_proxy_index_and_ca_bundle(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "ca.pem").write_text("CORPORATE CA\n")
    lines = run_build_venv(tmp_path, "dependencies", str(tmp_path / "venv"), "/tmp/requirements.txt",
                           TORCH_INDEX_URL="", PIP_INDEX_URL="https://mirror.example/simple")
    assert "ARGS -m pip install --quiet torch==2.13.0" in lines  # no torch index: PyPI's (CUDA) build, via the mirror
    assert "PIP_INDEX_URL=https://mirror.example/simple" in lines
    bundle = tmp_path / "build" / "all-ca.pem"
    assert f"PIP_CERT={bundle}" in lines
    assert bundle.read_text() == "SYSTEM CA\nCORPORATE CA\n"


# ---- the image's health check ----

class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"status": "unavailable", "detail": "Not ready; failed: database: down"} if self.status
                          != 200 else {"status": "success", "data": {"server": "ok"}}).encode()
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_healthcheck_probes_the_servers_health_endpoint(health_server: tuple[int, type[_Health]]) -> None:
    port, handler = health_server
    healthy = run_healthcheck("api", "--port", str(port))
    assert healthy.returncode == 0 and healthy.stdout.startswith("healthy:"), healthy.stdout + healthy.stderr
    handler.status = 503
    failed = run_healthcheck("api", "--port", str(port))
    assert failed.returncode == 1 and "database: down" in failed.stdout
    health_server_closed = run_healthcheck("api", "--port", "1")
    assert health_server_closed.returncode == 1 and "did not answer" in health_server_closed.stdout
    for port_text in ("eighty", "0", "70000", ""):
        bad_port = run_healthcheck("api", "--port", port_text)
        assert bad_port.returncode == 1 and bad_port.stderr == "", bad_port.stderr
        assert bad_port.stdout.count("\n") == 1 and "is not a port number" in bad_port.stdout, bad_port.stdout


def test_healthcheck_follows_a_workers_heartbeat(tmp_path: Path) -> None:
    from cotrain.db import open_database, sqlite_url
    from cotrain.server.orm import Worker

    engine, factory = open_database(sqlite_url(tmp_path / "cotrain.db"))
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(COTRAIN_HOME=str(tmp_path), COTRAIN_WORKER_ID="worker-1", COTRAIN_GPUS="", COTRAIN_START_DHT="0")
    missing = run_healthcheck("worker", env=env)
    assert missing.returncode == 1 and "no heartbeat" in missing.stdout, missing.stdout + missing.stderr
    with factory.begin() as db:
        db.add(Worker(id="worker-1", heartbeat_at=time.time()))
    fresh = run_healthcheck("worker", env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    with factory.begin() as db:
        db.get(Worker, "worker-1").heartbeat_at = time.time() - 600  # type: ignore[union-attr]
    stale = run_healthcheck("worker", env=env)
    assert stale.returncode == 1 and "last beat" in stale.stdout
    engine.dispose()


# ---- Kubernetes ----

def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def base_documents() -> list[dict[str, Any]]:
    base = K8S / "base"
    return [doc for resource in kustomization(base)["resources"] for doc in load_documents(base / resource)]


def json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove, the operations the overlay uses."""
    for operation in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) and last != "-" else last
        if operation["op"] == "remove":
            del node[key]
        elif operation["op"] == "replace":
            node[key] = operation["value"]
        elif operation["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if key == "-" else key, operation["value"])
            else:
                node[key] = operation["value"]
        else:
            raise AssertionError(f"the renderer knows no {operation['op']!r} operation")


def render_overlay(directory: Path) -> list[dict[str, Any]]:
    """The overlay as kustomize renders it, for what it uses: a base, images, replicas, JSON patches."""
    spec = kustomization(directory)
    assert set(spec) <= {"apiVersion", "kind", "resources", "images", "replicas", "patches"}, set(spec)
    assert spec["resources"] == ["../../base"]
    docs = copy.deepcopy(base_documents())
    images = {image["name"]: image for image in spec.get("images", [])}
    for doc in docs:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            image = images.get(container["image"].split(":")[0])
            if image:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for replicas in spec.get("replicas", []):
        [target] = [doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == replicas["name"]]
        target["spec"]["replicas"] = replicas["count"]
    for patch in spec.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [doc for doc in docs if doc["kind"] == patch["target"]["kind"]
                   and doc["metadata"]["name"] == patch["target"]["name"]]
        assert len(targets) == 1, patch
        json_patch(targets[0], operations)
    return docs


def kubectl_render(directory: Path) -> list[dict[str, Any]] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        missing_service("kubernetes-validate is not installed (pip install -e '.[dev]')")

    def check(doc: dict[str, Any]) -> None:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            at = "/".join(str(part) for part in exc.path) or "(top)"
            raise AssertionError(f"{where} is not a valid Kubernetes {K8S_VERSION} object at {at}: {exc.message}") \
                from None

    return check


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def test_every_base_manifest_validates(validate: Any) -> None:
    listed = set(kustomization(K8S / "base")["resources"])
    on_disk = {path.name for path in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "the base kustomization must list every manifest"
    docs = base_documents()
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "cotrain", doc["metadata"]["name"]
    kinds = {kind for kind, _ in by_kind(docs)}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Ingress", "PersistentVolumeClaim"} <= kinds


def test_the_production_overlay_renders_and_validates(validate: Any) -> None:
    overlay = K8S / "overlays" / "production"
    for patch in kustomization(overlay)["patches"]:
        assert isinstance(yaml.safe_load((overlay / patch["path"]).read_text()), list)
    rendered = render_overlay(overlay)
    by_kubectl = kubectl_render(overlay)
    if by_kubectl is not None:  # our renderer and kustomize agree, so the check below holds without kubectl
        assert by_kind(by_kubectl) == by_kind(rendered)
    for doc in rendered:
        validate(doc)
    docs = by_kind(rendered)
    ingress = docs[("Ingress", "cotrain")]["spec"]
    assert ingress["rules"][0]["host"] == ingress["tls"][0]["hosts"][0] == "cotrain.example.org"
    assert docs[("ConfigMap", "cotrain-config")]["data"]["COTRAIN_PUBLIC_ORIGIN"] == "https://cotrain.example.org"
    api, worker = docs[("Deployment", "cotrain-api")], docs[("Deployment", "cotrain-worker")]
    assert api["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/cotrain:0.1.0"
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/cotrain:0.1.0-gpu"
    assert worker["spec"]["replicas"] == 2


def test_kubernetes_api_worker_dht_and_storage(validate: Any) -> None:
    docs = by_kind(base_documents())
    api = docs[("Deployment", "cotrain-api")]["spec"]["template"]["spec"]
    [container] = api["containers"]
    assert api["securityContext"]["runAsNonRoot"] is True and api["securityContext"]["runAsUser"] != 0
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/health"), probe
    assert {"requests", "limits"} <= set(container["resources"])
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in api["volumes"]}
    assert claims == {"cotrain-home"} and docs[("PersistentVolumeClaim", "cotrain-home")]
    assert docs[("PersistentVolumeClaim", "cotrain-home")]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {"name": "dht", "containerPort": DHT_PORT, "hostPort": DHT_PORT, "protocol": "TCP"} in container["ports"]
    dht = docs[("Service", "cotrain-dht")]["spec"]
    assert dht["clusterIP"] == "None" and dht["selector"] == docs[("Deployment", "cotrain-api")]["spec"]["selector"][
        "matchLabels"]
    assert docs[("Ingress", "cotrain")]["spec"]["tls"][0]["secretName"]

    worker = docs[("Deployment", "cotrain-worker")]["spec"]["template"]["spec"]
    [worker_container] = worker["containers"]
    assert worker_container["args"] == ["worker"]
    resources = worker_container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert worker["nodeSelector"] and worker["securityContext"]["runAsNonRoot"] is True

    for name in ("postgres", "redis"):
        assert docs[("Service", name)]["spec"]["type"] == "ExternalName"
    secret = docs[("Secret", "cotrain-secrets")]["stringData"]
    assert "@postgres:" in secret["DATABASE_URL"] and "//redis:" in secret["REDIS_URL"]


def test_kubernetes_manifests_name_only_variables_the_code_reads() -> None:
    names: set[str] = set()
    for doc in base_documents():
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        elif doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
        elif doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {variable["name"] for variable in container.get("env", [])}
    assert names and undeclared(names) == []
    overlay = K8S / "overlays" / "production"
    patched = {operation["path"].split("/")[-1] for patch in kustomization(overlay)["patches"]
               for operation in yaml.safe_load((overlay / patch["path"]).read_text())
               if operation["path"].startswith("/data/")}
    assert undeclared(patched) == []
