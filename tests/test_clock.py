import pytest

from raypfl.sim.clock import EventQueue, SharedUplink, download_seconds


def test_events_pop_by_time_then_rank_then_insertion() -> None:
    q = EventQueue()
    q.push(2.0, "broadcast", round=1)
    q.push(1.0, "flush", rank=2)
    q.push(1.0, "upload", client=3)
    q.push(1.0, "upload", client=4)
    assert [(e.time, e.kind, e.client, e.round) for e in (q.pop(), q.pop(), q.pop(), q.pop())] == [
        (1.0, "upload", 3, -1), (1.0, "upload", 4, -1), (1.0, "flush", -1, -1), (2.0, "broadcast", -1, 1)]


def test_event_queue_snapshot_round_trip() -> None:
    q = EventQueue()
    for t in (3.0, 1.0, 2.0):
        q.push(t, "upload", client=int(t))
    q.push(2.5, "broadcast", 1, round=7)
    r = EventQueue.restore(q.snapshot())
    r.push(1.5, "flush")
    assert [(e.time, e.client, e.round) for e in (r.pop() for _ in range(5))] == [
        (1.0, 1, -1), (1.5, -1, -1), (2.0, 2, -1), (2.5, -1, 7), (3.0, 3, -1)]


def test_fifo_sharing_by_hand() -> None:
    # Capacity 6 MB/s; A and B each push 10 MB at up to 5 MB/s, A first.
    # A gets 5, B the remaining 1: A is done at t = 2 with B at 10 - 2 = 8 MB left.
    # Then B gets its full 5 MB/s: done at 2 + 8/5 = 3.6.
    link = SharedUplink(6.0)
    link.start(0, 10.0, 5.0)
    link.start(1, 10.0, 5.0)
    assert link.rates() == {0: 5.0, 1: 1.0}
    t, who = link.next_completion()
    assert (t, who) == (pytest.approx(2.0), 0)
    link.advance(t)
    assert link.remaining_mb(1) == pytest.approx(8.0)
    link.finish(0)
    t, who = link.next_completion()
    assert (t, who) == (pytest.approx(3.6), 1)


def test_later_upload_never_slows_an_earlier_one() -> None:
    link = SharedUplink(5.0)
    link.start(0, 10.0, 4.0)
    link.advance(1.0)  # A has 6 MB left
    link.start(1, 1.0, 4.0)  # B only gets the 1 MB/s that A leaves
    assert link.rates() == {0: 4.0, 1: 1.0}
    assert link.next_completion() == (pytest.approx(2.0), 1)
    link.advance(2.0)
    link.finish(1)
    assert link.next_completion() == (pytest.approx(2.0 + 2.0 / 4.0), 0)


def test_capacity_change_and_snapshot() -> None:
    link = SharedUplink(10.0)
    link.start(3, 6.0, 10.0)
    link.advance(0.2)  # 2 MB sent
    link.set_capacity(2.0)
    copy = SharedUplink.restore(link.snapshot())
    assert copy.next_completion() == (pytest.approx(0.2 + 4.0 / 2.0), 3)
    with pytest.raises(ValueError, match="already uploading"):
        copy.start(3, 1.0, 1.0)
    with pytest.raises(ValueError, match="back"):
        copy.advance(0.1)


def test_download_is_limited_by_the_slower_end() -> None:
    assert download_seconds(37.2, 20.0, 10.0) == pytest.approx(3.72)
    assert download_seconds(37.2, 1.0, 10.0) == pytest.approx(37.2)
