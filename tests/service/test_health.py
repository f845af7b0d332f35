"""``appliance health``: the service's lock, each component's heartbeat (one rule, shared with the page) and disk."""

import os

from appliance.service.health import check_health, component_alive
from appliance.service.lock import ServiceLock
from appliance.store import Store
from streamlit_app import shaping


class FakeClock:
    def __init__(self, now: float = 5_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_liveness_rule():
    assert component_alive("idle", 100.0, 2.0, clock=114.0)  # 14 s: within the 15 s floor
    assert not component_alive("idle", 100.0, 2.0, clock=116.0)
    assert component_alive("training", 100.0, 10.0, clock=129.0)  # 3 × a 10 s interval
    assert not component_alive("stopped", 100.0, 2.0, clock=101.0)
    assert not component_alive("idle", None, 2.0, clock=101.0)


def test_health_needs_the_service_and_every_component_alive(settings):
    clock = FakeClock()
    store = Store(settings.store_path, clock=clock)
    for name in ("scanner", "inference", "training"):
        store.component_beat(name, state="idle", interval=2.0, pid=os.getpid())
    health = check_health(settings, clock=clock.now + 1)
    assert not health.ok and health.components[0].name == "service" and not health.components[0].ok

    lock = ServiceLock(settings.data_dir)
    lock.acquire()
    try:
        health = check_health(settings, clock=clock.now + 1)
        assert health.ok, health.lines()
        names = [c.name for c in health.components]
        assert names == ["service", "inference", "scanner", "training", "disk"]
        stale = check_health(settings, clock=clock.now + 60)  # nobody beat for a minute
        assert not stale.ok and {c.name for c in stale.components if not c.ok} == {"scanner", "inference", "training"}
        page = shaping.component_health(store.components(), clock=clock.now + 60)
        assert [row["ok"] for row in page] == [False, False, False]  # the page says what the command says
    finally:
        lock.release()
