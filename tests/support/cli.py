"""Running ``orderflow`` as a real subprocess, the way an operator types it."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import msgspec


class Run(msgspec.Struct):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``orderflow`` with the test's settings and api URL in its environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> Run:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nodeapp",
            *args,
            env={**self.env, **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        except TimeoutError:
            proc.kill()  # a hung command must not outlive its test
            await proc.wait()
            raise
        assert proc.returncode is not None
        run = Run(proc.returncode, out.decode(), err.decode())
        assert "Traceback" not in run.err, run.err
        return run
