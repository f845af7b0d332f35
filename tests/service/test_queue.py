"""The SQLite job queue: one job per key, exclusive leases, heartbeats, bounded retries, crash recovery."""

import threading

from appliance.store import Store


class FakeClock:
    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_same_key_is_queued_once(store):
    first, created = store.enqueue("train", "abc:proj", payload={"x": 1}, project="proj")
    again, created_again = store.enqueue("train", "abc:proj", payload={"x": 2}, project="proj")
    assert created and not created_again and first == again
    assert len(store.jobs("train")) == 1


def test_two_workers_never_get_the_same_job(settings):
    setup = Store(settings.store_path)
    for n in range(40):
        setup.enqueue("segment", f"image-{n}", project="p")
    claimed: list[int] = []

    def worker(name: str) -> None:
        store = Store(settings.store_path)
        while (job := store.claim("segment", name, lease_seconds=60)) is not None:
            claimed.append(job.id)
            store.complete(job.id, name)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [job.id for job in setup.jobs()]
    assert {job.status for job in setup.jobs()} == {"done"}


def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_finish(settings):
    clock = FakeClock()
    store = Store(settings.store_path, clock=clock)
    job_id, _ = store.enqueue("train", "k")
    assert store.claim("train", "a", lease_seconds=30).id == job_id
    clock.advance(29.9)
    assert store.claim("train", "b", lease_seconds=60) is None  # still leased
    clock.advance(0.2)
    taken = store.claim("train", "b", lease_seconds=60)
    assert taken.id == job_id and taken.attempts == 2 and taken.lease_owner == "b"
    assert not store.heartbeat(job_id, "a", lease_seconds=60)
    assert not store.complete(job_id, "a")
    assert store.heartbeat(job_id, "b", lease_seconds=60) and store.complete(job_id, "b")


def test_a_heartbeat_keeps_the_lease(settings):
    clock = FakeClock()
    store = Store(settings.store_path, clock=clock)
    job_id, _ = store.enqueue("train", "k")
    store.claim("train", "a", lease_seconds=20)
    for _ in range(4):  # 60 s in all, three times the lease
        clock.advance(15)
        assert store.heartbeat(job_id, "a", lease_seconds=20)
    assert store.claim("train", "b", lease_seconds=60) is None
    clock.advance(21)  # no heartbeat for longer than the lease
    assert store.claim("train", "b", lease_seconds=60).lease_owner == "b"


def test_failures_are_retried_up_to_max_attempts_then_failed(settings):
    clock = FakeClock()
    store = Store(settings.store_path, clock=clock)
    job_id, _ = store.enqueue("train", "k", max_attempts=2)
    store.claim("train", "w", lease_seconds=60)
    assert store.fail(job_id, "w", "boom 1", retry_after=30) == "queued"
    clock.advance(29)
    assert store.claim("train", "w", lease_seconds=60) is None  # not before the retry delay
    clock.advance(2)
    store.claim("train", "w", lease_seconds=60)
    assert store.fail(job_id, "w", "boom 2") == "failed"
    job = store.job(job_id)
    assert job.attempts == 2 and job.error == "boom 2" and job.finished_at
    assert store.claim("train", "w", lease_seconds=60) is None
    store.retry(job_id)
    assert store.claim("train", "w", lease_seconds=60).attempts == 1


def test_release_gives_the_job_back_without_counting_the_attempt(store):
    job_id, _ = store.enqueue("train", "k", max_attempts=1)
    store.claim("train", "w", lease_seconds=60)
    store.release(job_id, "w", note="shutdown")
    job = store.claim("train", "w", lease_seconds=60)
    assert job.id == job_id and job.attempts == 1


def test_recovery_after_a_crash_requeues_running_jobs_within_their_attempts(store):
    survivor, _ = store.enqueue("train", "a", max_attempts=3)
    exhausted, _ = store.enqueue("train", "b", max_attempts=1)
    store.claim("train", "dead", lease_seconds=3600)
    store.claim("train", "dead", lease_seconds=3600)
    touched = {job.id: job.status for job in store.recover_jobs()}
    assert touched == {survivor: "queued", exhausted: "failed"}
    assert "interrupted" in store.job(exhausted).error


def test_claims_can_be_limited_to_projects_with_a_model(store):
    store.enqueue("segment", "x", project="waiting")
    ready, _ = store.enqueue("segment", "y", project="ready")
    assert store.claim("segment", "w", lease_seconds=60, projects=[]) is None
    assert store.claim("segment", "w", lease_seconds=60, projects=["ready"]).id == ready
    assert store.claim("segment", "w", lease_seconds=60, projects=["ready"]) is None


def test_a_job_whose_worker_keeps_dying_ends_failed_at_its_attempt_limit(store):
    job_id, _ = store.enqueue("segment", "poison", max_attempts=3)
    for attempt in (1, 2, 3):
        job = store.claim("segment", f"w{attempt}", lease_seconds=-1)  # the worker dies: its lease lapses
        assert job.id == job_id and job.attempts == attempt
    assert store.claim("segment", "w4", lease_seconds=60) is None
    job = store.job(job_id)
    assert job.status == "failed" and job.attempts == 3 and job.finished_at
    assert "stopped responding 3 time(s); no attempts left" in job.error
