"""The fault tests' reading path (``tests/support/rig.py``) with the agents behind a real link
(``central.netlink``): each agent runs in the link's gateway namespace and reaches the secure
broker, listening on the link's root end, only through the emulated wire; the ingest workers
stay in the root namespace and connect to the same address locally."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from central import local_services
from central.netlink import Link
from tests.support.processes import REPO, Proc
from tests.support.rig import Rig


class NsProc(Proc):
    """A :class:`Proc` that runs in ``link``'s gateway namespace."""

    def __init__(self, link: Link, args: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(args, {**env, "PYTHONPATH": str(REPO)}, log)  # this worktree's code
        self.link = link

    def start(self, extra_env: dict[str, str] | None = None) -> NsProc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.link.command([sys.executable, *self.args]),
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return self


@dataclass
class LinkRig(Rig):
    link: Link | None = None
    #: agent settings for a slow link, over the rig's (which suit a LAN)
    agent_overrides: dict[str, str] | None = None

    def _identity(self, name: str, port: int) -> dict[str, str]:
        assert self.pki is not None and self.link is not None
        return local_services.identity_env(self.pki, name, self.link.central_ip, port)

    def agent_env(self, gw: str) -> dict[str, str]:
        return {**super().agent_env(gw), **(self.agent_overrides or {})}

    def start_agent(self, gw: str = "gw-a", failpoint: str | None = None) -> Proc:
        assert self.link is not None
        proc = self.agents.get(gw)
        if proc is None:
            args = ["-m", "edge_agent", "run"]
            proc = NsProc(self.link, args, self.agent_env(gw), self.tmp / f"{gw}.log")
            self.agents[gw] = proc
            self.procs.append(proc)
        return proc.start({"EIOT_FAILPOINT": failpoint or ""})

    def rtt_ms(self, port: int) -> float:
        """The smoothed round trip time the gateway's kernel measured on its connection to
        ``port`` (``ss -ti``)."""
        assert self.link is not None
        out = subprocess.run(
            self.link.command(["ss", "-Htni", "state", "established", f"( dport = :{port} )"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        m = re.search(r"\brtt:([\d.]+)/", out)
        assert m, f"no established connection to {port} in the gateway namespace: {out!r}"
        return float(m.group(1))
