"""`make bench-compare BASE=<commit>`: what an order costs this checkout against an earlier
commit, measured side by side — the cost-per-order section of `make bench` alone.

The base is checked out into its own worktree under `.bench/` with its own locked environment
(`base.py`), its mesh started beside this checkout's (production command, one worker per
process, tracing off, the same settings), and both are loaded in interleaved windows — base,
new, new, base, … — so that the drift of the machine falls on both alike: at 32 connections
(wrk, the events of each window worked off inside it) and at a fixed 50 orders/s (the
open-loop loader, the customer's SSE stream open). Per order it reports the CPU of every
process of each mesh, their sum, and the shared PostgreSQL's and RabbitMQ's meanwhile.

`--tracing sampled` (`make bench-compare TRACING=sampled`) runs both meshes traced as
`make bench`'s sampled scenario is (one trace in ten kept, exported to a discarding sink):
what a change to the instrumentation saves on the requests that are not recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from base import DEFAULT_BASE, WORKTREES, base_environment
from mesh_bench import (
    BASE_ENV,
    MESH_PROCESSES,
    SAMPLED_RATIO,
    TRACING_OFF,
    base_mesh,
    cost_per_order,
    customer_token,
    nginx_sink,
    tracing_sampled,
)
from report import cost_lines

from meshdev.stack import running_mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the commit to compare with")
    parser.add_argument(
        "--tracing", choices=("off", "sampled"), default="off", help="both meshes' tracing"
    )
    arguments = parser.parse_args()
    commit, bin_dir = base_environment(arguments.base)

    async def run(workdir: Path) -> dict[str, Any]:
        with contextlib.ExitStack() as sinks:
            tracing = (
                tracing_sampled(sinks.enter_context(nginx_sink()))
                if arguments.tracing == "sampled"
                else TRACING_OFF
            )
            env = {**BASE_ENV, **tracing}
            async with (
                running_mesh(workdir / "new", names=MESH_PROCESSES, env=env) as new,
                base_mesh(workdir, bin_dir, env=env) as base,
            ):
                meshes = {"base": base, "new": new}
                tokens = {name: await customer_token(mesh) for name, mesh in meshes.items()}
                figures = await cost_per_order(meshes, tokens)
        tracing_label = f"sampled at {SAMPLED_RATIO}" if arguments.tracing == "sampled" else "off"
        return {**figures, "tracing": tracing_label}

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as workdir:
        figures = {**asyncio.run(run(Path(workdir))), "base_commit": commit}
    WORKTREES.mkdir(exist_ok=True)
    written = WORKTREES / f"compare-{commit[:12]}-{arguments.tracing}.json"
    written.write_text(json.dumps(figures, indent=2) + "\n")
    sys.stdout.write("\n".join(cost_lines(figures)) + "\n")


if __name__ == "__main__":
    main()
