"""Log rotation of the service's own logs (the page's, each training job's)."""

from appliance.service.files import rotate_log


def test_a_log_past_its_size_rotates_while_its_writer_keeps_appending(tmp_path):
    log = tmp_path / "page.log"
    writer = open(log, "ab")  # as the page process's stdout is opened
    for part in range(5):
        writer.write(f"part {part} ".encode() * 20)
        writer.flush()
        assert rotate_log(log, max_bytes=100, keep=3)
    writer.write(b"after")
    writer.flush()
    writer.close()
    assert log.read_bytes() == b"after"  # appended at the new end, no hole of zeros before it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.log", "page.log.1", "page.log.2", "page.log.3"]
    assert log.with_name("page.log.1").read_bytes().startswith(b"part 4")
    assert log.with_name("page.log.3").read_bytes().startswith(b"part 2")  # older parts beyond 3 are gone
    assert not rotate_log(log, max_bytes=100, keep=3) and not rotate_log(tmp_path / "missing.log")
