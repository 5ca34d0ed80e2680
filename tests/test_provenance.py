"""The parent run's `runner.git_commit`: read from the runner's own checkout without a git binary, in a
plain clone, with packed refs, in a `git worktree` (where `.git` is a file) and on a detached HEAD."""

from __future__ import annotations

import subprocess
from pathlib import Path

from runner.tracking import provenance


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_commit_is_read_in_a_clone_a_worktree_with_packed_refs_and_on_a_detached_head(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "runner").mkdir()
    git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    assert provenance._git_commit(repo / "runner") == first

    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    git(tmp_path / "side", "commit", "-q", "--allow-empty", "-m", "two")
    second = git(tmp_path / "side", "rev-parse", "HEAD")
    assert (tmp_path / "side" / ".git").is_file()
    assert provenance._git_commit(tmp_path / "side") == second != first

    git(repo, "pack-refs", "--all")  # the branch refs now live only in packed-refs
    assert provenance._git_commit(tmp_path / "side") == second
    assert provenance._git_commit(repo) == first

    git(tmp_path / "side", "checkout", "-q", "--detach", first)
    assert provenance._git_commit(tmp_path / "side") == first
    assert provenance._git_commit(tmp_path / "elsewhere") is None  # no checkout above it


def test_the_invocation_is_tagged_with_the_runners_own_commit() -> None:
    tags = provenance.invocation_tags(None)
    assert tags["runner.git_commit"] == git(provenance.RUNNER_CHECKOUT, "rev-parse", "HEAD")
