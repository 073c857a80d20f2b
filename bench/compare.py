"""What an order costs this checkout against an earlier commit, measured side by side.

`make bench-compare BASE=<commit>` (and `make bench`, against `DEFAULT_BASE`) checks the base
out into its own worktree under `.bench/` with its own locked environment, starts its mesh
beside this checkout's (production command, one worker per process, tracing off, the same
settings), and loads both in interleaved windows — base, new, new, base, … — so that the drift
of the machine falls on both alike. Per order it reports the CPU of every process of each mesh,
their sum, and the shared PostgreSQL's and RabbitMQ's CPU meanwhile: at 32 connections (wrk,
the events of each window worked off inside it) and at a fixed 50 orders/s (the open-loop
loader, the customer's SSE stream open).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import mesh_bench
from mesh_bench import BASE_ENV, TRACING_OFF, customer_token, interleaved, order_latency
from report import cost_lines

from meshdev.mesh import MESH
from meshdev.stack import RunningMesh, running_mesh

ROOT = Path(__file__).resolve().parent.parent
WORKTREES = ROOT / ".bench"
# The last commit before the cost-per-order work: what the cost target halves.
DEFAULT_BASE = "31bcee4"
MESH_PROCESSES = tuple(d.name for d in MESH)
FIXED_RATE = 50  # orders/s
FIXED_RATE_SECONDS = mesh_bench._int_env("BENCH_COMPARE_RATE_SECONDS", 5)


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


@contextlib.asynccontextmanager
async def base_mesh(workdir: Path, bin_dir: Path) -> AsyncIterator[RunningMesh]:
    async with running_mesh(
        workdir / "base", names=MESH_PROCESSES, env={**BASE_ENV, **TRACING_OFF}, bin_dir=bin_dir
    ) as mesh:
        yield mesh


async def cost_per_order(
    meshes: Mapping[str, RunningMesh], tokens: Mapping[str, str]
) -> dict[str, Any]:
    """Each mesh's CPU per order at 32 connections and at FIXED_RATE, interleaved."""
    mesh_bench.log("cost per order: POST /api/orders at 32 connections, base and new interleaved")
    saturated = await interleaved(
        {name: mesh_bench.order_post(mesh, tokens[name]) for name, mesh in meshes.items()}
    )
    mesh_bench.log(f"cost per order: {FIXED_RATE} orders/s, base and new interleaved")
    names = list(meshes)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name in [*names, *names[::-1]]:
        runs[name].append(
            await order_latency(meshes[name], tokens[name], FIXED_RATE, FIXED_RATE_SECONDS)
        )
    return {
        "connections": {name: _mesh_sum(row) for name, row in saturated.items()},
        "fixed_rate": {name: _mesh_sum(_merged(rows)) for name, rows in runs.items()},
        "fixed_rate_orders_per_second": FIXED_RATE,
    }


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one mesh at the fixed rate as one figure: CPU over all their orders."""
    orders = sum(run["orders_sent"] for run in runs)
    cpu = {
        key: {
            process: round(sum(run[key][process] * run["orders_sent"] for run in runs) / orders, 3)
            for process in runs[0][key]
        }
        for key in ("cpu_ms_per_request", "servers_cpu_ms_per_request")
    }
    return {
        **cpu,
        "orders": orders,
        "p99_ms": [run["p99_ms"] for run in runs],
        "orders_failed": sum(run["orders_failed"] for run in runs),
    }


def _mesh_sum(row: dict[str, Any]) -> dict[str, Any]:
    cpu = row["cpu_ms_per_request"]
    return {**row, "mesh_cpu_ms_per_order": round(sum(cpu[p] for p in MESH_PROCESSES), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the commit to compare with")
    arguments = parser.parse_args()
    commit, bin_dir = base_environment(arguments.base)

    async def run(workdir: Path) -> dict[str, Any]:
        async with (
            running_mesh(
                workdir / "new", names=MESH_PROCESSES, env={**BASE_ENV, **TRACING_OFF}
            ) as new,
            base_mesh(workdir, bin_dir) as base,
        ):
            meshes = {"base": base, "new": new}
            tokens = {name: await customer_token(mesh) for name, mesh in meshes.items()}
            return await cost_per_order(meshes, tokens)

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as workdir:
        figures = asyncio.run(run(Path(workdir)))
    figures["base_commit"] = commit
    WORKTREES.mkdir(exist_ok=True)
    (WORKTREES / f"compare-{commit[:12]}.json").write_text(json.dumps(figures, indent=2) + "\n")
    sys.stdout.write("\n".join(cost_lines(figures)) + "\n")


if __name__ == "__main__":
    main()
