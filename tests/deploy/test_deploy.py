"""Deployment files agree with CI, the settings and each other: Dockerfile, compose.yaml, systemd/, docs/deploy.md.

These tests read files only (no Docker engine, no systemd): ``scripts/check-deploy.sh`` runs them with
``--noconftest`` next to the linters and validators, and ``make test`` runs them with the rest of the suite.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
NATIVE_UNIT = ROOT / "systemd" / "appliance.service"
COMPOSE_UNIT = ROOT / "systemd" / "appliance-compose.service"
SYSUSERS = ROOT / "systemd" / "appliance.sysusers.conf"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# pip options that change output or caching, not what gets installed
COSMETIC_PIP_OPTIONS = {"--quiet", "-q", "-qq", "--disable-pip-version-check", "--no-cache-dir", "--no-cache"}
COSMETIC_UV_OPTIONS = {"--native-tls"}  # which certificates uv trusts (the system's, as pip), not what it installs
VALUED_OPTIONS = {"--python"}  # the environment installed into: pip's own, said explicitly to uv
# variables compose.yaml interpolates that are not appliance settings (image tag, user, host side of mounts/port)
COMPOSE_ONLY_VARIABLES = {
    "APPLIANCE_TAG",
    "APPLIANCE_UID",
    "APPLIANCE_GID",
    "APPLIANCE_HOST_DATA",
    "APPLIANCE_HOST_LABELLED",
    "APPLIANCE_HOST_IMAGES",
    "APPLIANCE_HOST_RESULTS",
    "APPLIANCE_PAGE_BIND",
    "APPLIANCE_PAGE_HOST_PORT",
}


# ---- helpers ---------------------------------------------------------------------------------------------------


def settings_defaults() -> dict[str, object]:
    """Field name -> default literal of ``appliance.settings.Settings``, read from the source (nothing imported)."""
    tree = ast.parse((ROOT / "appliance" / "settings.py").read_text(encoding="utf-8"))
    (settings,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    defaults = {}
    for node in settings.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and any(k.arg == "default" for k in value.keywords):
                value = next(k.value for k in value.keywords if k.arg == "default")
            try:
                defaults[node.target.id] = ast.literal_eval(value) if value is not None else None
            except ValueError:
                defaults[node.target.id] = ast.unparse(value)
    return defaults


def setting_variables() -> set[str]:
    return {f"APPLIANCE_{name.upper()}" for name in settings_defaults()} | {"APPLIANCE_CONFIG"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def pip_installs(commands: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """Each ``pip install`` or ``uv pip install`` in shell command lines as (installer, sorted options, what it
    installs), cosmetic options dropped."""
    installs = []
    for command in commands:
        for part in re.split(r"&&|;|\|\|", command):
            words = shlex.split(part)
            for i, word in enumerate(words[:-1]):
                if (word == "pip" or word.endswith("/pip")) and words[i + 1] == "install":
                    uv = i > 0 and (words[i - 1] == "uv" or words[i - 1].endswith("/uv"))
                    cosmetic = COSMETIC_PIP_OPTIONS | (COSMETIC_UV_OPTIONS if uv else set())
                    arguments = [w for w in words[i + 2 :] if w not in cosmetic]
                    options, target = [], None
                    j = 0
                    while j < len(arguments):
                        if arguments[j] in VALUED_OPTIONS:
                            j += 2
                            continue
                        if arguments[j] in ("-r", "--requirement", "-e", "--editable"):
                            kind = "-r" if arguments[j] in ("-r", "--requirement") else "-e"
                            target = f"{kind} {arguments[j + 1]}"
                            j += 2
                            continue
                        if arguments[j].startswith("-"):
                            options.append(arguments[j])
                        else:
                            target = arguments[j]
                        j += 1
                    installs.append(("uv" if uv else "pip", tuple(sorted(options)), target))
    return installs


def makefile_install_commands() -> list[str]:
    """The recipe of the Makefile's ``$(STAMP)`` target: how CI (``make test``) builds its environment."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    uv = next(line.partition(":=")[2].strip() for line in lines if line.startswith("UV :="))
    start = next(i for i, line in enumerate(lines) if line.startswith("$(STAMP):"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if not line.strip().startswith("#"):
            recipe.append(line.strip().replace("$(UV)", uv).replace("$(BIN)/", "").replace("$$", "$"))
    return recipe


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, repeated keys kept."""
    entries, section = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_entries(path) if s == section and k == key]


def compose_service() -> dict:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert list(document["services"]) == ["appliance"]
    return document["services"]["appliance"]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(arguments):
                name, _, value = item.partition("=")
                env[name] = value
    return env


# ---- Dockerfile: the same install as CI ----------------------------------------------------------------------------


def test_dockerfile_installs_exactly_the_lock_files_ci_installs_with_the_same_pip_flags():
    ci = pip_installs(makefile_install_commands())
    image = pip_installs([arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"])
    assert ci == [
        ("pip", (), "$(grep '^uv==' requirements.lock)"),  # uv itself, at the version the lock pins
        ("uv", ("--compile-bytecode",), "-r requirements.lock"),  # as pip does: each process then starts from .pyc
        ("uv", ("--compile-bytecode", "--no-build-isolation", "--no-deps"), "-r requirements-source.lock"),
        ("uv", ("--compile-bytecode", "--no-deps"), "-e ."),
    ], "the Makefile's install changed: update the Dockerfile to match, then this expectation"
    assert image == ci


def test_dockerfile_copies_each_lock_file_from_the_repository_before_installing_it():
    instructions = dockerfile_instructions()
    copied: set[str] = set()
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = shlex.split(arguments)
            copied |= set(sources)
        if keyword == "RUN":
            for _, _, target in pip_installs([arguments]):
                if target.startswith("-r "):
                    lock = target[3:]
                    assert (ROOT / lock).is_file()
                    assert lock in copied, f"{lock} is installed before it is copied into the image"


def test_dockerignore_lets_every_copied_file_into_the_build_context():
    patterns = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert "*" in patterns, ".dockerignore is an allow-list"
    for needed in ("requirements.lock", "requirements-source.lock", "pyproject.toml", "README.md", "appliance"):
        assert needed in allowed
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = shlex.split(arguments)
            assert all(source == "." or source.rstrip("/") in allowed for source in sources), arguments


def test_image_uses_the_python_minor_version_ci_uses():
    images = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(images) == 2, "a build stage and a runtime stage"
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for image in images:
        assert re.fullmatch(rf"python:{re.escape(minor)}(-slim)?-bookworm", image), image


def test_image_runs_the_service_unprivileged_with_health_check_port_and_volumes():
    instructions = dockerfile_instructions()
    runtime = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    keywords = dict((k, a) for k, a in runtime)
    defaults = settings_defaults()
    env = dockerfile_env()

    user = keywords["USER"]
    assert user.split(":")[0] not in ("root", "0"), user
    check = keywords["HEALTHCHECK"]
    assert yaml.safe_load(check[check.index(" CMD ") + 5 :]) == ["appliance", "health"], check
    assert keywords["EXPOSE"].split() == [str(defaults["page_port"])]
    assert env["APPLIANCE_PAGE_PORT"] == str(defaults["page_port"])
    volumes = set(yaml.safe_load(keywords["VOLUME"]))
    assert {env["APPLIANCE_DATA_DIR"], env["APPLIANCE_INBOX_DIR"], env["APPLIANCE_RESULTS_DIR"]} == volumes
    assert shlex.split(keywords["ENTRYPOINT"].strip("[]").replace(",", " ")) == ["appliance"]
    assert "run" in keywords["CMD"]
    # CUDA 13 wheels in the lock: the container toolkit must refuse older drivers, not fail at first use
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert {name for name in env if name.startswith("APPLIANCE_")} <= setting_variables()


def test_lock_file_pins_cuda_13_builds_the_image_documents():
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert re.search(r"^nvidia-cudnn-cu13==", lock, re.M)
    assert re.search(r"^nvidia-cuda-runtime==13\.", lock, re.M)
    assert "CUDA 13" in DOCKERFILE.read_text(encoding="utf-8")


# ---- compose.yaml ----------------------------------------------------------------------------------------------


def test_compose_reserves_a_gpu_and_restarts_unless_stopped():
    service = compose_service()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert service["restart"] == "unless-stopped"
    assert service["build"]["context"] == "."
    assert service["init"] is True


def test_compose_health_check_is_appliance_health():
    check = compose_service()["healthcheck"]
    assert check["test"][0] == "CMD" and check["test"][1:] == ["appliance", "health"]
    for key in ("interval", "timeout", "start_period"):
        assert re.fullmatch(r"\d+s", check[key])


def test_compose_publishes_the_page_port_of_the_settings():
    service = compose_service()
    port = str(settings_defaults()["page_port"])
    published = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(p)).rsplit(":", 2) for p in service["ports"]]
    assert [port, port] in [parts[-2:] for parts in published], published
    assert service["environment"]["APPLIANCE_PAGE_PORT"] == port


def test_compose_mounts_data_inbox_and_results_where_the_settings_point():
    service = compose_service()
    env = service["environment"]
    targets = {v["target"]: v for v in service["volumes"]}
    assert env["APPLIANCE_DATA_DIR"] in targets
    assert f"{env['APPLIANCE_INBOX_DIR']}/labelled" in targets
    assert f"{env['APPLIANCE_INBOX_DIR']}/images" in targets
    assert env["APPLIANCE_RESULTS_DIR"] in targets
    assert targets[f"{env['APPLIANCE_INBOX_DIR']}/images"].get("read_only") is True, "never modify the export share"
    assert all(v["type"] == "bind" for v in targets.values())
    image_env = dockerfile_env()
    for name in ("APPLIANCE_DATA_DIR", "APPLIANCE_INBOX_DIR", "APPLIANCE_RESULTS_DIR"):
        assert env[name] == image_env[name]


def test_compose_environment_and_env_example_name_only_real_settings():
    names = setting_variables()
    service = compose_service()
    assert set(service["environment"]) <= names
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)", text))
    example = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(encoding="utf-8"), re.M))
    assert used <= names | COMPOSE_ONLY_VARIABLES, used - names - COMPOSE_ONLY_VARIABLES
    assert example <= used, f".env.example sets variables compose.yaml does not use: {example - used}"


# ---- systemd -----------------------------------------------------------------------------------------------------


def test_native_unit_runs_appliance_from_the_makefile_venv_and_restarts_on_failure():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    venv = re.search(r"^VENV \?= (\S+)", makefile, re.M).group(1)
    (working_directory,) = unit_values(NATIVE_UNIT, "WorkingDirectory")
    (exec_start,) = unit_values(NATIVE_UNIT, "ExecStart")
    assert shlex.split(exec_start) == [f"{working_directory}/{venv}/bin/appliance", "run"]
    assert unit_values(NATIVE_UNIT, "Restart") == ["on-failure"]
    assert unit_values(NATIVE_UNIT, "WantedBy", "Install") == ["multi-user.target"]


def test_native_unit_is_hardened_and_writes_only_its_data_dir():
    assert unit_values(NATIVE_UNIT, "NoNewPrivileges") == ["yes"]
    assert unit_values(NATIVE_UNIT, "ProtectSystem") == ["strict"]
    assert unit_values(NATIVE_UNIT, "PrivateTmp") == ["yes"]
    assert unit_values(NATIVE_UNIT, "CapabilityBoundingSet") == [""]
    writable = " ".join(unit_values(NATIVE_UNIT, "ReadWritePaths")).split()
    environment = dict(v.split("=", 1) for v in unit_values(NATIVE_UNIT, "Environment"))
    assert environment["APPLIANCE_DATA_DIR"] in writable
    assert all(path.startswith("/var/") for path in writable), writable
    assert "PrivateDevices" not in {k for _, k, _ in unit_entries(NATIVE_UNIT)}, "the GPU is a device"


def test_native_unit_runs_as_the_dedicated_user_the_sysusers_file_creates():
    (user,) = unit_values(NATIVE_UNIT, "User")
    assert user not in ("root", "0")
    created = [line.split()[1] for line in SYSUSERS.read_text(encoding="utf-8").splitlines() if line.startswith("u ")]
    assert created == [user]


def test_native_settings_example_names_only_real_settings():
    example = ROOT / "systemd" / "appliance.env.example"
    names = set(re.findall(r"^#?(APPLIANCE_\w+)=", example.read_text(encoding="utf-8"), re.M))
    environment = {v.split("=", 1)[0] for v in unit_values(NATIVE_UNIT, "Environment")}
    assert names and names <= setting_variables()
    assert {n for n in environment if n.startswith("APPLIANCE_")} <= setting_variables()


def test_compose_unit_runs_the_repository_compose_file_after_docker():
    assert "docker.service" in unit_values(COMPOSE_UNIT, "Requires", "Unit")
    assert "docker.service" in " ".join(unit_values(COMPOSE_UNIT, "After", "Unit"))
    (working_directory,) = unit_values(COMPOSE_UNIT, "WorkingDirectory")
    (start,) = unit_values(COMPOSE_UNIT, "ExecStart")
    words = shlex.split(start)
    assert words[:2] == ["/usr/bin/docker", "compose"] and "up" in words and "--detach" in words
    assert words[words.index("--file") + 1] == f"{working_directory}/compose.yaml"
    assert unit_values(COMPOSE_UNIT, "WantedBy", "Install") == ["multi-user.target"]


# ---- docs/deploy.md --------------------------------------------------------------------------------------------

REPO_PATH = re.compile(
    r"^(?:\.?[\w-]+/)*(?:Dockerfile|Makefile|\.env\.example|[\w.-]+\.(?:yaml|yml|md|lock|service|conf|example|sh|toml|py))/?$"
)
INSTALL_ROOT = "/opt/appliance/"
# file names the doc mentions that users or the appliance create, not files of this repository
NOT_REPOSITORY_FILES = {"dataset.yaml"}


def doc_tokens() -> list[str]:
    """Every inline-code span and every word of every fenced block of docs/deploy.md."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```\w*\n.*?^```", "", text, flags=re.M | re.S))
    tokens = []
    for span in inline + blocks:
        tokens += span.split()
    return tokens


def doc_commands() -> list[list[str]]:
    """The shell commands of the fenced blocks, comments dropped and ``sudo [-u USER]``, ``env``, ``X=Y`` stripped."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                if words[0] in ("sudo", "env"):
                    words = words[1:]
                elif words[0] == "-u":
                    words = words[2:]
                elif re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                else:
                    break
            if words:
                commands.append(words)
    return commands


def test_deploy_doc_names_only_files_that_exist():
    named = set()
    for token in doc_tokens():
        token = token.strip("(),;:'\"")
        if token.startswith(INSTALL_ROOT):
            token = token[len(INSTALL_ROOT) :]
            if token.startswith(".venv/"):  # made by `make install`
                continue
        if token.endswith(".service") and "/" not in token:  # a unit name: one of systemd/
            token = f"systemd/{token}"
        if REPO_PATH.match(token) and token not in NOT_REPOSITORY_FILES:
            named.add(token.rstrip("/"))
    missing = sorted(name for name in named if not (ROOT / name).exists())
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"
    for needed in ("Dockerfile", "compose.yaml", ".env.example", "systemd/appliance.service"):
        assert needed in named
    assert "systemd/appliance-compose.service" in named and "scripts/check-deploy.sh" in named


def test_deploy_doc_commands_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    make_targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    cli = (ROOT / "appliance" / "cli.py").read_text(encoding="utf-8")
    subcommands = set(re.findall(r'@main\.command\("([\w-]+)"', cli))
    subcommands |= set(re.findall(r"@main\.command\(\)\n(?:@.*\n)*def (\w+)", cli))
    services = set(yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"])
    units = {p.name for p in (ROOT / "systemd").glob("*.service")}
    checked = 0
    for words in doc_commands():
        if words[0] == "make":
            assert words[1] in make_targets, words
        elif words[0] == "appliance" or words[0].endswith("/bin/appliance"):
            assert words[1] in subcommands, words
        elif words[:2] == ["docker", "compose"] and "exec" in words:
            service, program, subcommand = words[words.index("exec") + 1 :][:3]
            assert service in services and program == "appliance" and subcommand in subcommands, words
        elif words[0] == "systemctl":
            assert all(word in units for word in words if word.endswith(".service")), words
        else:
            continue
        checked += 1
    assert checked >= 8
    assert {"run", "health", "config"} <= subcommands


def test_deploy_doc_names_only_real_settings():
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\bAPPLIANCE_[A-Z_]+\b", text))
    assert {"APPLIANCE_POLLING", "APPLIANCE_PAGE_PASSWORD", "APPLIANCE_INBOX_DIR"} <= mentioned
    assert mentioned <= setting_variables() | COMPOSE_ONLY_VARIABLES, mentioned - setting_variables()


def test_the_shipped_page_is_published_on_loopback_only():
    """An empty password is the default, so the default must not publish the page to the network."""
    (port,) = [p for p in compose_service()["ports"] if p.endswith(":8501")]
    assert port.startswith("${APPLIANCE_PAGE_BIND:-127.0.0.1}:"), port
    example = dict(re.findall(r"^(\w+)=(.*)$", (ROOT / ".env.example").read_text(encoding="utf-8"), re.M))
    assert example["APPLIANCE_PAGE_BIND"] == "127.0.0.1"
