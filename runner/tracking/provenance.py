"""Provenance tags of a `runner run` invocation: spec file and digest, git commit, package versions,
Ray job id. Read from files and the environment only (no git binary: `ray job submit` may lack one)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

PACKAGES = ("torch", "torchvision", "ray", "mlflow", "timm")
RUNNER_CHECKOUT = Path(__file__).resolve().parents[2]  # the runner's own code, wherever the spec lies


def _git_commit(start: Path) -> str | None:
    """HEAD's commit read from .git files (no git binary needed; `ray job submit` may lack one)."""
    git = next((d / ".git" for d in (start, *start.parents) if (d / ".git").is_dir()), None)
    if git is None:
        return None
    head = (git / "HEAD").read_text().strip()
    ref = head.removeprefix("ref: ")
    if ref == head:
        return head  # detached
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = git / "packed-refs"
    lines = packed.read_text().splitlines() if packed.is_file() else []
    return next((line.split()[0] for line in lines if line.endswith(" " + ref)), None)


def _ray_job_id() -> str | None:
    """The submission id under `ray job submit` (Ray passes it to the driver in its job config)."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except ValueError:
        config = {}
    return (config.get("metadata") or {}).get("job_submission_id") or os.environ.get("RAY_JOB_ID")


def invocation_tags(spec_path: str | None) -> dict[str, str]:
    tags = {}
    if spec_path:
        tags["runner.spec_file"] = str(spec_path)
        tags["runner.spec_sha256"] = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    commit = os.environ.get("RUNNER_GIT_COMMIT") or _git_commit(RUNNER_CHECKOUT)
    if commit:
        tags["runner.git_commit"] = commit
    for package in PACKAGES:
        try:
            tags[f"runner.version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    if job := _ray_job_id():
        tags["runner.ray_job_id"] = job
    return tags
