import threading

from pipelines.data.skips import SkipLog


def test_counts_events_and_distinct_files_with_first_reason():
    log = SkipLog("val")
    assert log.add("a.jpg", "mask too small") and not log.add(b"a.jpg", "other")
    log.add_all([b"b.jpg", "a.jpg"])
    assert (log.skipped, log.events, log.files) == (2, 4, ["a.jpg", "b.jpg"])
    assert log.reasons == {"a.jpg": "mask too small", "b.jpg": "undecodable image"}
    assert log.take_new() == (4, ["a.jpg", "b.jpg"]) and log.take_new() == (0, [])
    log.add("b.jpg")
    assert log.take_new() == (1, [])
    assert log.summary() == "val: skipped 5 image reads (2 distinct files: a.jpg, b.jpg)"
    assert SkipLog("train").summary() == "train: no skipped images"


def test_thread_safe():
    log = SkipLog()
    threads = [threading.Thread(target=lambda k=k: [log.add(f"{k}-{i % 50}") for i in range(400)])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.events == 8 * 400 and log.skipped == 8 * 50 and log.take_new()[0] == 3200
