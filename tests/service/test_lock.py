"""One service per data dir and per inbox."""

import pytest

from appliance.errors import ServiceError
from appliance.service.lock import ServiceLock, service_running


def test_a_second_service_on_the_same_data_dir_is_refused(tmp_path):
    first = ServiceLock(tmp_path / "data")
    first.acquire()
    assert service_running(tmp_path / "data")
    with pytest.raises(ServiceError, match="a service already runs on"):
        ServiceLock(tmp_path / "data").acquire()
    first.release()
    assert not service_running(tmp_path / "data")


def test_a_second_service_with_another_data_dir_on_the_same_inbox_is_refused(tmp_path):
    inboxes = (tmp_path / "inbox" / "labelled", tmp_path / "inbox" / "images")
    first = ServiceLock(tmp_path / "data-a", inboxes=inboxes)
    first.acquire()
    second = ServiceLock(tmp_path / "data-b", inboxes=(tmp_path / "elsewhere", inboxes[1]))
    with pytest.raises(ServiceError, match=f"another service already watches {inboxes[1]}"):
        second.acquire()
    assert not service_running(tmp_path / "data-b")  # nothing half-held after the refusal
    assert list((tmp_path / "inbox" / "labelled").iterdir()) == []  # nothing written into the inbox
    first.release()
    second.acquire()
    second.release()


def test_one_folder_for_both_inboxes_is_locked_once(tmp_path):
    lock = ServiceLock(tmp_path / "data", inboxes=(tmp_path / "inbox", tmp_path / "inbox"))
    lock.acquire()
    lock.release()
