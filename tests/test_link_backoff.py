# The link's reconnect back-off and its per-message checks, with a fake clock and a fake client:
# no network, no threads.
from tukar.link import BACKOFF_CAP_MS, Backoff, Link
from tukar.outbox import Outbox
from tukar.sockets import SocketGuard, WithSeq


class FakeClock:
    def __init__(self):
        self.now = 0
        self.slept = []

    def ticks_ms(self):
        return self.now & 0x3FFFFFFF

    def sleep_ms(self, ms):
        self.slept.append(ms)
        self.now += ms


class RefusingClient:
    """A client whose connect always fails, like a broker that is down."""
    attempts = []

    def __init__(self, *a, **kw):
        self.sock = None

    def set_callback(self, f):
        pass

    def set_last_will(self, *a, **kw):
        pass

    def connect(self, clean_session=True, timeout=None):
        RefusingClient.attempts.append(CLOCK.now)
        raise OSError(111, "ECONNREFUSED")


CLOCK = FakeClock()


def info():
    return {"id": "cab-1", "fw": "t", "board": "t", "slots": 1, "profiles": [],
            "boot": {"reason": "power_on", "count": 1}, "time_synced": False}


def test_backoff_doubles_from_1_s_and_is_capped_at_60_s():
    b = Backoff(rand=lambda: 0.999999)
    delays = [b.next_ms() for _ in range(10)]
    assert delays == [999, 1999, 3999, 7999, 15999, 31999, 59999, 59999, 59999, 59999]
    assert max(delays) <= 60000 == BACKOFF_CAP_MS


def test_backoff_jitter_stays_between_half_and_the_whole_delay():
    b = Backoff(rand=lambda: 0.0)
    assert [b.next_ms() for _ in range(8)] == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]


def test_backoff_reset_starts_again_at_1_s():
    b = Backoff(rand=lambda: 0.5)
    for _ in range(5):
        b.next_ms()
    b.reset()
    assert b.next_ms() == 750


def test_link_retries_a_refused_broker_at_the_backoff_times_capped_at_60_s():
    global CLOCK
    CLOCK = FakeClock()
    RefusingClient.attempts = []
    link = Link({"id": "cab-1", "host": "127.0.0.1", "port": 1}, RefusingClient, Outbox(), info,
                clock=CLOCK, rand=lambda: 0.999999)
    while len(RefusingClient.attempts) < 10:
        link.step()
    gaps = [b - a for a, b in zip(RefusingClient.attempts, RefusingClient.attempts[1:])]
    assert gaps == [999, 1999, 3999, 7999, 15999, 31999, 59999, 59999, 59999]
    assert max(CLOCK.slept) <= 100  # waits in slices: stop() is seen within 100 ms
    assert not link.connected and "ECONNREFUSED" in link.last_error


def link_for_messages():
    return Link({"id": "cab-1", "prefix": "tukar", "host": "h"}, RefusingClient, Outbox(), info)


def test_messages_on_any_topic_but_cmd_are_ignored():
    link = link_for_messages()
    link._on_message(b"tukar/cab-1/cmdx", b"{}")
    link._on_message(b"tukar/cab-1/state", b"{}")
    link._on_message(b"tukar/cab-2/cmd", b"{}")
    assert link.take_commands() == []
    assert link.stats["ignored_topics"] == 3


def test_commands_are_queued_raw_with_their_retain_flag():
    link = link_for_messages()
    link._on_message(b"tukar/cab-1/cmd", b'{"body":"x"}', True)
    link._on_message(b"tukar/cab-1/cmd", b"not json", False)
    assert link.take_commands() == [(b'{"body":"x"}', True), (b"not json", False)]
    assert link.take_commands() == []


def test_at_most_16_commands_wait_and_the_oldest_go_first():
    link = link_for_messages()
    for n in range(20):
        link._on_message(b"tukar/cab-1/cmd", b"%d" % n, False)
    assert [p for p, _ in link.take_commands()] == [b"%d" % n for n in range(4, 20)]
    assert link.stats["commands_dropped"] == 4


def test_seq_is_spliced_into_the_json_text_as_it_is_written():
    class Sock:
        def __init__(self):
            self.out = b""

        def write(self, buf, n=None):
            self.out += bytes(buf)
            return len(buf)

        def settimeout(self, t):
            pass

    class Clock:
        def ticks_ms(self):
            return 0

    for text, seq, want in ((b'{"a":1}', 255, b'{"a":1,"seq":255}'), (b"{}", 0, b'{"seq":0}')):
        sock = Sock()
        g = SocketGuard(sock, None, 5, Clock())
        p = WithSeq(text, seq)
        g.write(p)
        assert sock.out == want and len(p) == len(want) and bytes(p) == want and g.tx == len(want)


def test_posting_never_raises_even_with_an_unserialisable_payload():
    link = link_for_messages()
    link.post_state("state", {"x": object()})
    link.post_ack({"x": object()})
    assert "post_state" in link.last_error or "post_ack" in link.last_error


def test_no_tls_handshake_is_tried_before_the_clock_is_set():
    """Certificate dates fail until NTP sets the clock, and a handshake holds the GIL for 1.2 to
    2 s on an ESP32: the link waits for the time, then connects."""
    RefusingClient.attempts = []
    known = [False]
    link = Link({"id": "cab-1", "host": "b", "ssl": True}, RefusingClient, Outbox(), info,
                clock=CLOCK, time_known=lambda: known[0])
    for _ in range(50):
        link.step()
    assert RefusingClient.attempts == []
    assert link.last_error == "waiting for the clock (NTP) before TLS"
    known[0] = True
    link.step()
    assert len(RefusingClient.attempts) == 1


def test_plain_mqtt_does_not_wait_for_the_clock():
    RefusingClient.attempts = []
    link = Link({"id": "cab-1", "host": "b"}, RefusingClient, Outbox(), info, clock=CLOCK,
                time_known=lambda: False)
    link.step()
    assert len(RefusingClient.attempts) == 1
