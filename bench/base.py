"""An earlier commit of the project, checked out and installed beside this checkout, so that
its mesh can be measured side by side with this one's (`make bench`, `make bench-compare`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKTREES = ROOT / ".bench"
# The last commit before the cost-per-order work: what the cost target halves.
DEFAULT_BASE = "31bcee4"


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def base_environment(revision: str) -> tuple[str, Path]:
    """The commit `revision` names and the `bin` directory of its locked environment, in a
    worktree of its own (`.bench/base-<commit>`, kept for the next run)."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = WORKTREES / f"base-{commit[:12]}"
    if not (tree / ".git").exists():
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", "--force", str(tree), commit)
    uv = os.environ.get("UV") or shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    subprocess.run(
        [uv, "sync", "--locked", "--quiet"],
        cwd=tree,
        env={**env, "UV_PROJECT_ENVIRONMENT": str(tree / ".venv")},
        check=True,
        timeout=600,
    )
    return commit, tree / ".venv" / "bin"
