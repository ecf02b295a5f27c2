"""Benches' rows with a shared SSH connection (``gateway.transports.mux``), honestly labelled.

Sharing is switched on in the bench's own AIF_HOME only around those rows (the
other rows connect directly, as without the setting). The first shared run
starts each site's holder; :meth:`SharedConnection.wait_warm` waits until they
serve, and every timed shared run is checked to have ridden on the same holder
(a run that fell back to a direct connection would be a cold figure in a warm row).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.transports.mux import holder_pids, stop_holders

PERSIST_S = 600  # the holders outlive the whole bench; stopped at its end


class SharedConnection:
    def __init__(self, home: Path, sites: Sequence[str]) -> None:
        self.home = home
        self.sites = list(sites)

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        """Sharing on for the runs inside; checks they all rode on the holders found warm."""
        config = self.home / "config.toml"
        config.write_text(f"[ssh]\nshare_connection = true\npersist_s = {PERSIST_S}\n")
        before = holder_pids(self.home)
        try:
            yield
        finally:
            config.unlink()
        after = holder_pids(self.home)
        if before and before != after:
            raise SystemExit(f"bench: a holder changed during a shared run ({before} -> {after})")

    def wait_warm(self, seconds: float = 30.0) -> None:
        """Until every site's holder serves (after a first shared run started them)."""
        give_up = time.monotonic() + seconds
        while not self.warm():
            if time.monotonic() > give_up:
                raise SystemExit(f"bench: no holder serves {self.sites} (see {self.home / 'mux'})")
            time.sleep(0.05)

    def warm(self) -> bool:
        pids = holder_pids(self.home)
        return all(site in pids and (self.home / "mux" / f"{site}.sock").exists() for site in self.sites)

    def stop(self) -> None:
        stop_holders(self.home)
