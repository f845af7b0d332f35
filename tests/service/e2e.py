"""A real ``appliance run`` subprocess on a temp data dir, and read-only looks into its store."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SERVICE_ENVIRONMENT = {
    "APPLIANCE_TOP_N": "2",
    "APPLIANCE_DEFAULT_BUDGET": "30s",
    "APPLIANCE_QUIET_PERIOD": "2s",
    "APPLIANCE_STABLE_SECONDS": "1",
    "APPLIANCE_RESCAN_INTERVAL": "5s",
    "APPLIANCE_DISK_RESERVE_GB": "0",
    "APPLIANCE_LEASE_SECONDS": "20s",
}


class ServiceProcess:
    def __init__(self, data_dir: Path, **environment: str):
        self.data_dir = data_dir
        self.log_path = data_dir.parent / "service.log"
        self.environment = {**os.environ, **SERVICE_ENVIRONMENT, **environment, "APPLIANCE_DATA_DIR": str(data_dir)}
        self.environment.pop("APPLIANCE_CONFIG", None)
        self.process: subprocess.Popen | None = None

    def start(self, *, wait_healthy: bool = True) -> "ServiceProcess":
        """Start ``appliance run`` in its own process group (a fault point kills the whole group, never pytest)."""
        log = open(self.log_path, "ab")
        command = [sys.executable, "-m", "appliance.cli", "run", "--no-page"]
        self.process = subprocess.Popen(
            command, env=self.environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait_healthy:
            self.wait_for(lambda: self.health()[0] == 0, 120, "the service to report healthy")
        return self

    def health(self) -> tuple[int, str]:
        command = [sys.executable, "-m", "appliance.cli", "health"]
        result = subprocess.run(command, env=self.environment, capture_output=True, text=True, timeout=120)
        return result.returncode, result.stdout + result.stderr

    def kill(self) -> None:
        """SIGKILL the service process alone (its training child must die with it)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 90) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def rows(self, query: str, args=()) -> list:
        path = self.data_dir / "appliance.sqlite"
        if not path.is_file():
            return []
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return connection.execute(query, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"the service exited ({self.process.returncode}) waiting for {what}:\n{self.log()}"
                )
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.log()}")


def drop(source: Path, target: Path) -> Path:
    """Copy a folder or file into the inbox the way a technician's copy tool does (file by file, no rename)."""
    import shutil

    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return target


def seed_throughput(store_path, monkeypatch) -> None:
    """The device's throughput table, filled with plausible numbers instead of the minutes of probing a first run
    on a new device spends (what is tested here is what survives a kill, not the probe)."""
    import torch

    from appliance.automl import throughput
    from appliance.store import Store

    def probe(store, table, group, device, log):
        speed = 2e6 / (group.patch_size**2 * group.batch_size) / (2 if group.encoder == "resnet50" else 1)
        store.record_throughput(table.device, table.version, group, speed, source=throughput.PROBE)
        table.record(group, speed, throughput.PROBE)

    monkeypatch.setattr(throughput, "_probe", probe)
    monkeypatch.setattr(throughput, "measure_prediction", lambda encoder, device: 1.0)
    store = Store(store_path)
    throughput.ensure_reference_measurements(store, torch.device("cpu"))
    store.close()
