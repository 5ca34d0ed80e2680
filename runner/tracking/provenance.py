"""Provenance of a `runner run` invocation: tags (spec file and digest, git commit, package versions, Ray
job id; read from files and the environment only, no git binary: `ray job submit` may lack one), and
the data set each trial trains on as an MLflow run input (name, masked source URI, digest)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag

from runner.masking import redact

PACKAGES = ("torch", "torchvision", "ray", "mlflow", "timm")
log = logging.getLogger(__name__)

DATASET_DIGEST_CHARS = 16  # MLflow keeps digests short (its own are 8 characters; the column holds 36)
RUNNER_CHECKOUT = Path(__file__).resolve().parents[2]  # the runner's own code, wherever the spec lies


def _git_commit(start: Path) -> str | None:
    """HEAD's commit read from .git files (no git binary needed; `ray job submit` may lack one)."""
    found = _git_dirs(start)
    if found is None:
        return None
    git, common = found
    head = (git / "HEAD").read_text().strip()
    ref = head.removeprefix("ref: ")
    if ref == head:
        return head  # detached
    for folder in (git, common):
        if (folder / ref).is_file():
            return (folder / ref).read_text().strip()
    packed = common / "packed-refs"
    lines = packed.read_text().splitlines() if packed.is_file() else []
    return next((line.split()[0] for line in lines if line.endswith(" " + ref)), None)


def _git_dirs(start: Path) -> tuple[Path, Path] | None:
    """(the checkout's git folder, the repository's common folder). In a plain clone both are `.git`; in a
    `git worktree` or a submodule `.git` is a file naming the git folder (`gitdir: ...`), whose `commondir`
    names the folder that holds the shared refs."""
    for folder in (start, *start.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot, dot
        if dot.is_file() and (text := dot.read_text().strip()).startswith("gitdir: "):
            git = (folder / text.removeprefix("gitdir: ")).resolve()
            common = git / "commondir"
            return git, (git / common.read_text().strip()).resolve() if common.is_file() else git
    return None


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
        tags["runner.spec_file"] = redact(str(spec_path))
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


def dataset(path: str, meta: Any) -> Dataset:
    """The data set a trial trains on, as MLflow logs a run input: its name (folder or `synthetic:N`),
    the source URI (credentials masked), a digest of meta.json's file digests (of the source string for
    `synthetic`, which is generated, not stored) and a small profile (classes, split sizes, image shape)."""
    synthetic = not meta.sha256
    name = path if synthetic else path.rstrip("/").rsplit("/", 1)[-1]
    facts = json.dumps(meta.sha256 or {"source": path}, sort_keys=True)
    digest = getattr(meta, "digest", None) or hashlib.sha256(facts.encode()).hexdigest()[:DATASET_DIGEST_CHARS]
    scheme = path.split("://", 1)[0] if "://" in path else ("synthetic" if synthetic else "local")
    profile = {"classes": len(meta.classes), "image_shape": list(meta.image_shape),
               **{f"{split}_images": counts.get("total") for split, counts in meta.counts.items()}}
    return Dataset(name=redact(name), digest=digest, source_type=scheme, source=json.dumps({"uri": redact(path)}),
                   profile=json.dumps(profile))


def dataset_input(path: str, meta: Any) -> DatasetInput:
    return DatasetInput(dataset(path, meta), tags=[InputTag("mlflow.data.context", "training")])


class DataSets:
    """Run inputs by data path, each meta.json read once per invocation (the caller may hand over the
    ones it read already); None for a path whose meta.json is unreadable (that trial fails on its own)."""

    def __init__(self, metas: Mapping[str, Any] | None = None) -> None:
        self._metas: dict[str, Any] = dict(metas or {})

    def input_of(self, path: str | None) -> DatasetInput | None:
        if not path:
            return None
        if path not in self._metas:
            from runner import data  # lazy: reading a data set imports pyarrow and torch

            try:
                self._metas[path] = data.read_meta(path)
            except (data.DataError, OSError) as exc:
                log.warning("data set %s: no run input logged (%s)", redact(path), redact(str(exc)))
                self._metas[path] = None
        meta = self._metas[path]
        return None if meta is None else dataset_input(path, meta)
