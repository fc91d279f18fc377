"""examples/monitor.py (the seed's example) runs against a real server and stops on "deployed"."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from conftest import Server

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "monitor.py"


async def test_monitor_example_prints_progress_and_exits(server: Server) -> None:
    env = dict(os.environ, STACKPULSE_ENDPOINT=server.ws_url, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().strip() == "Monitoring deployment D1BRV40...", line
        await server.apublish("D1BRV40", {"status": "deploying", "current_layer": 1, "total_layers": 2})
        await server.apublish(
            "D1BRV40",
            {"stack_name": "api", "environment": "prod", "duration_seconds": 42, "resource_count": 7},
            "stack.deployed",
        )
        await server.apublish("D1BRV40", {"status": "deployed", "current_layer": 2, "total_layers": 2})
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
    assert out.decode().splitlines() == [
        "Deployment D1BRV40: deploying",
        "  Layer 1/2",
        "✓ Stack api-prod deployed",
        "  Duration: 42s",
        "  Resources: 7",
        "Deployment D1BRV40: deployed",
        "  Layer 2/2",
    ]
