"""``appliance health``: is the service running, and is every component up? For container health checks."""

from __future__ import annotations

import time
from dataclasses import dataclass

from appliance.service.disk import training_space
from appliance.service.lock import service_running
from appliance.settings import Settings
from appliance.store import Store

STALE_SECONDS = 15.0
DOWN_STATES = ("down", "stopped", "failed")


def component_alive(state: str | None, heartbeat: float | None, interval: float | None, *, clock: float) -> bool:
    """The one rule of a live component (``appliance health`` and the page both use it): its state is not down and
    its last heartbeat is no older than ``max(15 s, 3 × its heartbeat interval)``."""
    if heartbeat is None:
        return False
    return state not in DOWN_STATES and clock - heartbeat <= max(STALE_SECONDS, 3 * (interval or 1))


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    ok: bool
    state: str
    detail: str
    age_seconds: float | None


@dataclass(frozen=True)
class Health:
    ok: bool
    components: tuple[ComponentHealth, ...]
    queue: dict[str, int]

    def lines(self) -> list[str]:
        out = []
        for c in self.components:
            age = "" if c.age_seconds is None else f", {c.age_seconds:.0f} s ago"
            detail = f": {c.detail}" if c.detail else ""
            out.append(f"{'ok  ' if c.ok else 'DOWN'} {c.name:<10} {c.state}{age}{detail}")
        queue = ", ".join(f"{k} {v}" for k, v in sorted(self.queue.items())) or "empty"
        out.append(f"     queue      {queue}")
        return out


def check_health(settings: Settings, *, clock: float | None = None) -> Health:
    """The service's health from its lock and the ``components`` table (no component is started or touched)."""
    clock = time.time() if clock is None else clock
    running = service_running(settings.data_dir)
    components = [ComponentHealth("service", running, "running" if running else "not running", "", None)]
    queue: dict[str, int] = {}
    if settings.store_path.is_file():
        store = Store(settings.store_path)
        try:
            for row in store.components():
                if row.name == "service":
                    continue
                ok = running and component_alive(row.state, row.heartbeat, row.interval, clock=clock)
                age = None if row.heartbeat is None else clock - row.heartbeat
                components.append(ComponentHealth(row.name, ok, row.state, row.detail or "", age))
            for kind, status, count in store.queue_counts():
                queue[f"{kind} {status}"] = count
        finally:
            store.close()
    elif running:
        components.append(ComponentHealth("store", False, "missing", str(settings.store_path), None))
    allowed, message = training_space(settings)
    state = "ok" if allowed else "below reserve: intake of sets and training paused until space is freed"
    components.append(ComponentHealth("disk", True, state, message, None))
    return Health(all(c.ok for c in components) and len(components) > 2, tuple(components), queue)
