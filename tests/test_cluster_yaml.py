"""Offline checks of cluster.yaml: Ray's own validation, then the project's invariants.

No cloud calls and no Ray cluster: Ray's schema and `prepare_config`/`validate_config` (what `ray up`
runs before it talks to AWS), then `invariant_violations`, which reads the file as text and as a YAML
node graph (so placeholder aliases can be told from hard-coded copies). Each invariant also has a
mutated copy of the file that must break it. What needs no AWS is executed here too: a wheel is built
from exactly the mounted project files, and the head's shell commands (the ~/runner.env writer, the
.bashrc hook, the MLflow server start/restart) run against a temporary HOME.

    pytest -m "not slow" tests/test_cluster_yaml.py   # ~2 s; without -m, + the MLflow start check (30-60 s)
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
VENV_BIN = str(Path(sys.executable).parent)

MLFLOW_PORT = 5000
AWS_KEY_PATTERNS = [r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"aws_access_key_id", r"aws_session_token"]
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}


# ------------------------------------------------------------------------------------------------
# the invariant checker


def _head_commands(cfg: dict) -> list[str]:
    return list(cfg.get("head_setup_commands", [])) + list(cfg.get("head_start_ray_commands", []))


def _worker_commands(cfg: dict) -> list[str]:
    cmds = list(cfg.get("worker_setup_commands", [])) + list(cfg.get("worker_start_ray_commands", []))
    for node_type in cfg.get("available_node_types", {}).values():
        cmds += node_type.get("worker_setup_commands", [])
    return cmds


def head_env(cfg: dict) -> dict[str, str]:
    """metadata.head_env with {placeholders} filled in, as the head's env writer does."""
    meta = cfg["metadata"]
    return {k: str(v).format(**meta["placeholders"]) for k, v in meta["head_env"].items()}


def _mlflow_hosts(commands: list[str]) -> list[str]:
    """The --host of every `mlflow server` command (None when it has none: MLflow then binds 127.0.0.1)."""
    hosts = []
    for cmd in commands:
        for match in re.finditer(r"mlflow\s+server\b(.*)", cmd, flags=re.S):
            host = re.search(r"(?:--host|-h)[=\s]+['\"]?([^\s'\"]+)", match.group(1))
            hosts.append(host.group(1) if host else None)
    return hosts


def _placeholder_violations(text: str) -> list[str]:
    """Every anchor lives in metadata.placeholders; nothing outside it copies a placeholder's value."""
    root = yaml.compose(text)
    top = {key.value: (key, value) for key, value in root.value}
    if "metadata" not in top or "placeholders" not in {k.value for k, _ in top["metadata"][1].value}:
        return ["placeholders: no metadata.placeholders block"]
    out = []
    block = dict((k.value, v) for k, v in top["metadata"][1].value)["placeholders"]
    values = {k.value: v for k, v in block.value}
    first_other = min(k.start_mark.line for name, (k, _) in top.items() if name not in ("metadata", "cluster_name"))
    if top["metadata"][0].start_mark.line > first_other:
        out.append("placeholders: the metadata block is not at the top of the file")
    for event in yaml.parse(text):
        if isinstance(event, yaml.AliasEvent):
            continue
        anchor, line = getattr(event, "anchor", None), event.start_mark.line
        if anchor and not block.start_mark.line <= line <= block.end_mark.line:
            out.append(f"placeholders: anchor &{anchor} (line {line + 1}) is defined outside metadata.placeholders")
    # An alias is the very node it refers to, so a copy is any other scalar holding a placeholder's value.
    placeholder_nodes = {id(v) for v in values.values()}

    def walk(node, inside):
        if isinstance(node, yaml.ScalarNode):
            if inside or id(node) in placeholder_nodes:
                return
            for name, ph in values.items():
                if isinstance(ph, yaml.ScalarNode) and len(ph.value) >= 6 and ph.value in node.value:
                    out.append(
                        f"placeholders: {node.value!r} (line {node.start_mark.line + 1}) hard-codes "
                        f"placeholder {name!r}; use its alias"
                    )
        elif isinstance(node, yaml.MappingNode):
            for _, value in node.value:
                walk(value, inside or node is block)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, inside)

    walk(root, False)
    return out


def invariant_violations(text: str) -> list[str]:
    """Everything the project requires of cluster.yaml beyond Ray's schema; [] when all hold."""
    cfg = yaml.safe_load(text)
    out: list[str] = []
    env = head_env(cfg)
    head_type = cfg["head_node_type"]
    node_types = cfg["available_node_types"]
    head_cmds = _head_commands(cfg)

    # MLflow: a server on the head, loopback only; the job driver's URI points at it; artifacts on S3.
    hosts = _mlflow_hosts(head_cmds)
    if not hosts:
        out.append("mlflow: the head commands start no `mlflow server`")
    for host in hosts:
        if host not in (None, "127.0.0.1", "localhost"):
            out.append(f"mlflow: server bound to {host}, must be 127.0.0.1 (it has no authentication)")
    if _mlflow_hosts(_worker_commands(cfg)):
        out.append("mlflow: a worker node starts an MLflow server")
    if not any(f"--port {MLFLOW_PORT}" in c for c in head_cmds if "mlflow server" in c):
        out.append(f"mlflow: server not on port {MLFLOW_PORT}")
    if env.get("MLFLOW_TRACKING_URI") != f"http://127.0.0.1:{MLFLOW_PORT}":
        out.append(f"mlflow: MLFLOW_TRACKING_URI is {env.get('MLFLOW_TRACKING_URI')!r}")
    if not env.get("MLFLOW_ARTIFACTS_DESTINATION", "").startswith("s3://"):
        out.append("mlflow: MLFLOW_ARTIFACTS_DESTINATION is not on s3://")
    if not any("--artifacts-destination" in c for c in head_cmds):
        out.append("mlflow: the server is not given --artifacts-destination")

    # Job drivers inherit the Ray head's environment: runner.env must be sourced before `ray start --head`.
    start = [c for c in cfg.get("head_start_ray_commands", []) if "ray start --head" in c]
    if not start or not re.search(r"\.\s+~/runner\.env.*ray start --head", start[0], flags=re.S):
        out.append("env: `ray start --head` does not source ~/runner.env (jobs would miss RUNNER_STORAGE)")
    if not env.get("RUNNER_STORAGE", "").startswith("s3://"):
        out.append(
            f"storage: RUNNER_STORAGE is {env.get('RUNNER_STORAGE')!r}, must be s3:// (checkpoints survive node loss)"
        )

    # Token auth on every node, one token for all.
    if env.get("RAY_AUTH_MODE") != "token":
        out.append("auth: the head does not run with RAY_AUTH_MODE=token")
    if not any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in cfg.get("worker_start_ray_commands", [])):
        out.append("auth: workers do not start with RAY_AUTH_MODE=token")
    if "~/.ray/auth_token" not in cfg.get("file_mounts", {}):
        out.append("auth: ~/.ray/auth_token is not shipped to the nodes (file_mounts)")

    # Node types: workers scale from zero; trial drivers only on on-demand nodes; never spot on the head.
    resource = env.get("RUNNER_TRIAL_RESOURCE")
    if not resource or not node_types[head_type]["resources"].get(resource):
        out.append(f"trial drivers: the head does not advertise RUNNER_TRIAL_RESOURCE ({resource!r})")
    for name, node_type in node_types.items():
        node_config = node_type.get("node_config", {})
        spot = "InstanceMarketOptions" in node_config or "SpotOptions" in json.dumps(node_config)
        if name != head_type and node_type.get("min_workers", 0) != 0:
            out.append(f"node type {name}: min_workers is {node_type.get('min_workers')}, must be 0")
        if spot and name == head_type:
            out.append(f"node type {name}: the head is on spot")
        if spot and resource and node_type["resources"].get(resource):
            out.append(f"node type {name}: spot nodes advertise {resource} (a reclaim would kill trial drivers)")
        if "IamInstanceProfile" not in node_config:
            out.append(f"node type {name}: no IamInstanceProfile (nodes need S3 access without keys)")
        if node_config.get("SecurityGroupIds"):
            out.append(f"node type {name}: SecurityGroupIds set; its ingress cannot be checked offline")

    # Ingress: Ray's group allows intra-cluster traffic and SSH; extra rules may not open anything else.
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        ssh_only = rule.get("IpProtocol") == "tcp" and rule.get("FromPort") == 22 and rule.get("ToPort") == 22
        if cidrs & OPEN_CIDRS and not ssh_only:
            out.append(f"ingress: {rule} opens more than SSH to the internet")

    # No credentials in the file.
    for pattern in AWS_KEY_PATTERNS:
        if re.search(pattern, text, flags=re.I):
            out.append(f"credentials: {pattern} found; use IamInstanceProfile")

    # Image: the official Ray image of the installed Ray version (ray-ml has no tags after 2.49).
    images = [cfg.get("docker", {}).get(k) for k in ("image", "head_image", "worker_image")]
    for image in filter(None, images):
        if not image.startswith(f"rayproject/ray:{ray.__version__}-"):
            out.append(f"docker: {image} is not rayproject/ray:{ray.__version__}-*")

    return out + _placeholder_violations(text)


# ------------------------------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def cfg(text) -> dict:
    return yaml.safe_load(text)


def test_raw_yaml_matches_ray_schema(cfg):
    jsonschema.validate(cfg, json.loads(RAY_SCHEMA.read_text()))


def test_ray_validates_prepared_config(cfg):
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_validation_is_live(cfg):
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["gpu1"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_invariants_hold(text):
    assert invariant_violations(text) == []


def test_documented_scale(cfg):
    types = cfg["available_node_types"]
    gpus = {name: t["resources"].get("GPU", 0) * t["max_workers"] for name, t in types.items() if "max_workers" in t}
    assert types["gpu1"]["max_workers"] == 100 and gpus["gpu4"] == 100
    assert cfg["max_workers"] == sum(t.get("max_workers", 0) for n, t in types.items() if n != cfg["head_node_type"])


def _sub(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


MUTATIONS = {
    "mlflow on 0.0.0.0": (lambda t: _sub(t, "--host 127.0.0.1", "--host 0.0.0.0"), "mlflow: server bound to 0.0.0.0"),
    "worker min_workers 1": (
        lambda t: _sub(t, "  gpu1:\n    min_workers: 0", "  gpu1:\n    min_workers: 1"),
        "node type gpu1: min_workers is 1",
    ),
    "storage on local disk": (
        lambda t: re.sub(r"RUNNER_STORAGE: \S+", "RUNNER_STORAGE: /home/ray/results", t),
        "storage: RUNNER_STORAGE is '/home/ray/results'",
    ),
    "dashboard open to the world": (
        lambda t: _sub(
            t,
            "IpPermissions: []",
            'IpPermissions: [{IpProtocol: tcp, FromPort: 8265, ToPort: 8265, IpRanges: [{CidrIp: "0.0.0.0/0"}]}]',
        ),
        "ingress:",
    ),
    "spot head": (
        lambda t: _sub(
            t,
            "      InstanceType: m5.2xlarge\n",
            "      InstanceType: m5.2xlarge\n      InstanceMarketOptions: {MarketType: spot}\n",
        ),
        "node type head: the head is on spot",
    ),
    "trial drivers on spot": (
        lambda t: _sub(t, 'resources: {"CPU": 8, "GPU": 1}', 'resources: {"CPU": 8, "GPU": 1, "trial_driver": 8}'),
        "node type gpu1: spot nodes advertise trial_driver",
    ),
    "access key in the file": (
        lambda t: t + "# AWS_SECRET_ACCESS_KEY=abc\n",
        "credentials:",
    ),
    "no instance profile on a worker": (
        lambda t: _sub(
            t,
            "      InstanceType: g5.12xlarge\n      ImageId: *ami\n      KeyName: *key_name\n"
            "      IamInstanceProfile:\n        Arn: *worker_instance_profile_arn\n",
            "      InstanceType: g5.12xlarge\n      ImageId: *ami\n      KeyName: *key_name\n",
        ),
        "node type gpu4: no IamInstanceProfile",
    ),
    "hard-coded placeholder": (
        lambda t: _sub(t, "KeyName: *key_name", "KeyName: runner-key"),
        "placeholders: 'runner-key'",
    ),
    "anchor outside the block": (
        lambda t: _sub(t, "InstanceType: g5.2xlarge", "InstanceType: &gpu_type g5.2xlarge"),
        "placeholders: anchor &gpu_type",
    ),
    "bucket hard-coded in a command": (
        lambda t: _sub(
            t, "MLFLOW_ARTIFACTS_DESTINATION: s3://{bucket}/", "MLFLOW_ARTIFACTS_DESTINATION: s3://runner-bucket/"
        ),
        "placeholders: 's3://runner-bucket/mlflow-artifacts'",
    ),
    "workers without token auth": (
        lambda t: _sub(t, "RAY_AUTH_MODE=token ray start --address", "ray start --address"),
        "auth: workers do not start with RAY_AUTH_MODE=token",
    ),
    "ray-ml image": (
        lambda t: _sub(t, "image: rayproject/ray:2.60.0-py311-gpu", "image: rayproject/ray-ml:2.49.0-py311-gpu"),
        "docker: rayproject/ray-ml",
    ),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutation_breaks_an_invariant(text, name):
    mutate, expected = MUTATIONS[name]
    mutated = mutate(text)
    assert mutated != text
    violations = invariant_violations(mutated)
    assert any(v.startswith(expected) for v in violations), violations


# ------------------------------------------------------------------------------------------------
# the head's own commands, executed locally


def _command(cfg: dict, key: str, needle: str) -> str:
    matches = [c for c in cfg[key] if needle in c]
    assert len(matches) == 1, (key, needle, matches)
    return matches[0]


def _bash(cmd: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": f"{VENV_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=timeout)


def test_head_env_file_and_bashrc_hook(cfg, tmp_path):
    # Ray puts the prepared config, as JSON, at ~/ray_bootstrap_config.yaml on the head.
    (tmp_path / "ray_bootstrap_config.yaml").write_text(json.dumps(prepare_config(copy.deepcopy(cfg))))
    writer = _command(cfg, "head_setup_commands", "shlex")
    hook = _command(cfg, "head_setup_commands", ".bashrc")
    for cmd in (writer, hook, hook):  # the hook twice: it must not append twice
        result = _bash(cmd, tmp_path)
        assert result.returncode == 0, result.stderr
    assert len([line for line in (tmp_path / ".bashrc").read_text().splitlines() if "runner.env" in line]) == 1
    result = _bash(". ~/runner.env && env", tmp_path)
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    expected = head_env(cfg)
    assert {k: seen.get(k) for k in expected} == expected
    assert seen["RUNNER_STORAGE"] == "s3://runner-bucket/runner"


def test_mounted_project_builds_with_its_console_script(cfg, tmp_path):
    """The file_mounts under ~/runner carry everything `pip install` needs (pyproject, README, packages)."""
    mounted = {remote: local for remote, local in cfg["file_mounts"].items() if remote.startswith("~/runner/")}
    assert mounted, "no project files are mounted under ~/runner"
    for remote, local in mounted.items():
        source, target = ROOT / local, tmp_path / "runner" / remote.removeprefix("~/runner/")
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    assert any("cp -r ~/runner " in c and "pip install" in c for c in cfg["setup_commands"])
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "out"),
         str(tmp_path / "runner")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "runner = runner.cli:main" in entry_points
    assert {"runner/cli.py", "models/__init__.py"} <= set(names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_head_mlflow_server_starts_on_loopback_and_restarts(cfg):
    """The head's MLflow start command, run twice (a re-run of `ray up`), then stopped by its group."""
    port = _free_port()
    start = _command(cfg, "head_start_ray_commands", "mlflow server").replace(f"--port {MLFLOW_PORT}", f"--port {port}")
    wait = _command(cfg, "head_start_ray_commands", "/health").replace(f":{MLFLOW_PORT}/", f":{port}/")
    home = Path(tempfile.mkdtemp(prefix="mlf-", dir="/tmp"))
    pgids: list[int] = []
    try:
        (home / "runner.env").write_text(
            f"export MLFLOW_BACKEND_STORE_URI=sqlite:///{home}/mlflow/mlflow.db\n"
            f"export MLFLOW_ARTIFACTS_DESTINATION={home}/artifacts\n"
            "export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false\n"
        )
        for _ in range(2):
            result = _bash(start, home)
            assert result.returncode == 0, result.stderr
            result = _bash(wait, home, timeout=200)
            assert result.returncode == 0, result.stdout + result.stderr
            pgids.append(int((home / "mlflow" / "server.pid").read_text()))
            assert _healthy(port)
        assert pgids[0] != pgids[1] and not _group_alive(pgids[0]), "the re-run did not stop the first server"
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening and all("127.0.0.1:" in line for line in listening.splitlines()), listening
    finally:
        for pgid in pgids:
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.time() + 20
        while any(_group_alive(p) for p in pgids) and time.time() < deadline:
            time.sleep(0.5)
        shutil.rmtree(home, ignore_errors=True)
    assert not any(_group_alive(p) for p in pgids)
