"""The XRootD packet parser and monitor state, on packets recorded from a real xrootd 5.5.3
(`xrdcp` of a 1 MiB file as root and a 300000-byte file as nobody), and fuzzed with hypothesis:
truncated, oversized, garbage, duplicated and reordered packets never raise, memory stays within
its caps, and every problem is counted."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afmon.collectors.probes import xrootd_packets as xp
from afmon.collectors.probes.xrootd import (
    UNKNOWN_USER,
    Monitor,
    XRootDProbe,
    login_identity,
    pgwrite_payload,
)

ADDR = ("10.0.0.7", 40001)
# Recorded by a UDP listener next to `xrootd -c ...` (see tests/collectors/xrootd_netns.py)
REAL = [
    bytes.fromhex(h)
    for h in (
        "3d0000616b073f98000000003d2f726f6f742e32373638373a353935353636393538353939303440766d0a2673"
        "6974653d544553542d414626706f72743d323130393426696e73743d74312670676d3d78726f6f74642676"
        "65723d76352e352e33",  # '=' server ident: port 21094, host vm
        "750100526b073f980000000178726f6f742f726f6f742e32373736323a3539353536363935383539393034405b"
        "3a3a3132372e302e302e315d0a26523d76352e352e3326783d787264637026793d26493d34",  # u root
        "6402003d6b073f980000000278726f6f742f726f6f742e32373736323a353935353636393538353939303440"
        "5b3a3a3132372e302e302e315d0a2f6631",  # d /f1
        "750400546b073f980000000378726f6f742f6e6f626f64792e32373737353a35393535363639353835393930"
        # u nobody
        "34405b3a3a3132372e302e302e315d0a26523d76352e352e3326783d787264637026793d26493d34",
        "660001086b073f9802010018000000066b073f996b073f9a0000362a9fb362c00101001c000000020000000000"
        "100000000000012f66310000000000000200500000000200000000001000000000000000000000000000000000"
        "00000000000100000000000000000000000000000000000000007fffffff000000000000000000000000000000"
        "000000000004000008000000010101001c0000000400000000000493e0000000032f6632000000000000020050"
        "0000000400000000000493e0000000000000000000000000000000000000000100000000000000000000000000"
        "000000000000007fffffff00000000000000000000000000000000000000000400000800000003",
        # f: time, open f1 (user 1), close, disc 1, open f2 (user 3), close, disc 3
    )
]
F1, F2 = 1_048_576, 300_000
SUMMARY = (
    '<statistics tod="{tod}" ver="v5.5.3" src="vm:21094" tos="{tos}" pgm="xrootd" ins="t1" '
    'pid="27687" site="TEST-AF"><stats id="info"><host>vm</host><port>21094</port><name>t1</name>'
    '</stats><stats id="link"><num>0</num><maxn>1</maxn><tot>2</tot><in>{i}</in><out>{o}</out>'
    '<ctime>0</ctime><tmo>0</tmo><stall>0</stall><sfps>0</sfps></stats><stats id="xrootd"><num>2'
    "</num><ops><open>{n}</open><rf>0</rf><rd>2</rd><pr>0</pr><rv>0</rv><rs>0</rs><wv>0</wv><ws>0"
    "</ws><wr>0</wr></ops></stats></statistics>"
)  # recorded, trimmed to the parts afmon reads


def summary(tos: int, tod: int, i: int, o: int, n: int) -> bytes:
    return SUMMARY.format(tos=tos, tod=tod, i=i, o=o, n=n).encode()


def reads(m: Monitor) -> dict[tuple[str, str], float]:
    """(user label, source) -> bytes read."""
    out: dict[tuple[str, str], float] = {}
    for (user, source, _identity, _auth), t in m.users.items():
        out[(user, source)] = out.get((user, source), 0) + t.values["read"]
    return out


def map_packet(code: str, pseq: int, dictid: int, text: str, stod: int = 1000) -> bytes:
    body = struct.pack("!I", dictid) + text.encode()
    return struct.pack("!cBHI", code.encode(), pseq, 8 + len(body), stod) + body


# -- the real packets ------------------------------------------------------------------------


def test_real_fstream_parses_to_its_records() -> None:
    h = xp.parse_header(REAL[4])
    assert (h.code, h.pseq, h.plen, h.stod) == ("f", 0, 264, 0x6B073F98)
    recs = xp.parse_fstream(REAL[4])
    assert [type(r).__name__ for r in recs] == [
        "TimeRec",
        "OpenRec",
        "XferRec",
        "DiscRec",
        "OpenRec",
        "XferRec",
        "DiscRec",
    ]
    assert recs[1] == xp.OpenRec(2, F1, False, 1, "/f1")
    assert recs[2] == xp.XferRec(2, F1, 0, 0, final=True)
    assert recs[4] == xp.OpenRec(4, F2, False, 3, "/f2")
    u = xp.parse_map(REAL[1], xp.parse_header(REAL[1]))
    assert (u.dictid, u.userid.prot, u.userid.user, u.userid.host) == (
        1,
        "xroot",
        "root",
        "[::127.0.0.1]",
    )
    s = xp.parse_summary(summary(100, 101, 442, 1_350_283, 2))
    assert (s.host, s.port, s.tos, s.link_in, s.link_out, s.opens) == (
        "vm",
        21094,
        100,
        442,
        1_350_283,
        2,
    )


def test_monitor_joins_files_to_users_and_classifies_by_role() -> None:
    m = Monitor({"10.0.0.7:21094": "cache"}, clock=lambda: 0.0)
    for p in REAL:
        m.feed_detail(p, ADDR, 1.0)
    # no authentication protocol: the names are the clients' own assertions, marked as such
    assert reads(m) == {("asserted:root", "cache"): F1, ("asserted:nobody", "cache"): F2}
    assert {k[2:] for k in m.users} == {("asserted", "none")}
    assert m.servers["10.0.0.7:21094"].values["opened"] == 2
    assert not m.errors
    assert m.seq["lost"] == 1  # map pseq 3 was a `t` trace packet, left out of REAL


def test_duplicate_packets_count_once_and_lost_ones_are_counted() -> None:
    m = Monitor(clock=lambda: 0.0)
    for p in [*REAL, REAL[4]]:  # the f packet twice
        m.feed_detail(p, ADDR, 1.0)
    assert reads(m) == {("asserted:root", "remote"): F1, ("asserted:nobody", "remote"): F2}
    assert m.seq["duplicate"] == 1
    stod = xp.parse_header(REAL[0]).stod
    ahead = map_packet("u", 9, 7, "xroot/eve.1:2@h\n&o=cms", stod)  # map pseqs 0-2, 4 seen
    m.feed_detail(ahead, ADDR, 2.0)
    assert m.seq["lost"] == 1 + 4  # pseq 3, then 5..8
    m.feed_detail(map_packet("u", 3, 8, "xroot/fred.1:2@h\n", stod), ADDR, 2.0)
    assert (m.seq["lost"], m.seq["reordered"]) == (4, 1)  # 3 was only late


def test_token_identity_and_restart_keep_dictids_apart() -> None:
    m = Monitor(clock=lambda: 0.0)
    m.feed_detail(map_packet("u", 0, 5, "https/x.1:2@h\n&p=ztn&n=&o=atlas"), ADDR, 1.0)
    m.feed_detail(map_packet("T", 1, 6, "https/x.1:2@h\n&Uc=5&s=sub-42&n=alice&o=atlas"), ADDR, 1.0)
    opened = struct.pack("!BBhIqI", 1, 1, 28, 9, 10, 5) + b"/a\0\0\0\0\0\0"
    close = struct.pack("!BBhIqqq", 0, 0, 32, 9, 100, 20, 3)
    f = struct.pack("!cBHI", b"f", 0, 8 + len(opened) + len(close), 1000) + opened + close
    m.feed_detail(f, ADDR, 1.0)
    assert reads(m) == {("alice", "remote"): 120}
    assert next(iter(m.users)) == ("alice", "remote", "verified", "token")
    ident = next(iter(m.streams.values())).users[5]
    assert (ident.local, ident.vo, ident.subject) == ("alice", "atlas", "sub-42")
    # the server restarts (new stod): file id 9 of the new life was never opened there
    f2 = struct.pack("!cBHI", b"f", 0, 8 + len(close), 2000) + close
    m.feed_detail(f2, ADDR, 2.0)
    assert reads(m)[(UNKNOWN_USER, "remote")] == 120
    assert m.errors["close_without_open"] == 1


def test_summary_differences_and_restarts() -> None:
    m = Monitor({"vm:21094": "local"}, clock=lambda: 50.0)
    for tos, tod, i, o, n in [
        (100, 101, 10, 1000, 1),
        (100, 103, 30, 5000, 2),
        (100, 102, 20, 3000, 1),  # late: ignored, counted
        (200, 201, 5, 700, 1),
    ]:  # restarted: counts in full
        m.feed_summary(summary(tos, tod, i, o, n), ADDR, 1.0)
    t = m.servers["10.0.0.7:21094"]
    assert (t.source, t.values["link_out"], t.values["link_in"], t.values["opens"]) == (
        "local",
        5700,
        35,
        3,
    )
    assert (t.values["restarts"], m.seq["reordered"]) == (1, 1)
    # a server that started before the listener: its first report is only a baseline
    m2 = Monitor(clock=lambda: 500.0)
    m2.feed_summary(summary(100, 600, 1, 9999, 9), ADDR, 1.0)
    m2.feed_summary(summary(100, 601, 2, 10999, 9), ADDR, 2.0)
    assert m2.servers["10.0.0.7:21094"].values["link_out"] == 1000


def test_opens_that_never_close_stay_within_the_cap() -> None:
    m = Monitor(max_files=50, clock=lambda: 0.0)
    for i in range(400):
        rec = struct.pack("!BBhIq", 1, 0, 16, i, 10)
        m.feed_detail(struct.pack("!cBHI", b"f", i % 256, 8 + 16, 1) + rec, ADDR, 1.0)
    stream = next(iter(m.streams.values()))
    assert len(stream.files) == 50
    assert m.evicted["file"] == 350
    assert m.users[(UNKNOWN_USER, "remote", "unknown", "none")].values["opened"] == 400


def test_probe_listens_on_handed_in_sockets_and_reports_series() -> None:
    summary_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    detail_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    summary_sock.bind(("127.0.0.1", 0))
    detail_sock.bind(("127.0.0.1", 0))
    probe = XRootDProbe("n1", Monitor(), sockets=(summary_sock, detail_sock))
    try:
        probe.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for p in REAL:
                tx.sendto(p, detail_sock.getsockname())
            tx.sendto(b"\x00garbage", detail_sock.getsockname())
        deadline = time.monotonic() + 10
        while probe.monitor.packets["detail"] < len(REAL) + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        series = {(s.metric, tuple(sorted(s.labels.items()))): s for s in probe.collect(5.0).series}
    finally:
        probe.close()
    key = (
        ("auth", "none"),
        ("identity", "asserted"),
        ("node", "n1"),
        ("source", "remote"),
        ("user", "asserted:root"),
    )
    s = series[("user_data_read_bytes", key)]
    assert (s.values, s.unit, s.kind, s.created is not None) == ([F1], "bytes", "counter", True)
    err = series[("xrootd_monitor_errors", (("node", "n1"), ("reason", "truncated")))]
    assert err.values == [1.0]


# -- identities, pgwrite, restarts, reconciliation ------------------------------------------


def test_identities_are_verified_only_by_an_authentication_protocol() -> None:
    asserted = login_identity("someone-", {"R": "v5.5.3", "x": "xrdcp"}, 1.0)
    assert (asserted.local, asserted.identity, asserted.auth) == (
        "asserted:someone-*",  # 8 characters: kXR_login may have cut the name
        "asserted",
        "none",
    )
    assert login_identity("bob", {}, 1.0).local == "asserted:bob"
    # recorded from xrootd 5.5.3 with `sec.protocol unix`: login someone-else by daemon
    unix = login_identity("someone-", xp.parse_cgi("&p=unix&n=daemon&h=[::1]&o=&g=daemon"), 1.0)
    assert (unix.local, unix.identity, unix.auth) == ("daemon", "verified", "unix")
    assert login_identity("x", {"n": "eve"}, 1.0).identity == "asserted"  # n= without p=


# recorded from xrootd 5.5.3 with `sec.protocol sss`: a 19-character account's xrdcp with its
# own key (tests/collectors/xrootd_netns.py, server C); the login name is cut to 8 characters,
# sss vouches for the whole name
SSS_LOGIN = bytes.fromhex(
    "750100976b1198a40000000178726f6f742f616e616c797369732e373132373a313331313330353336353535"
    "373539405b3a3a3132372e302e302e315d0a26703d737373266e3d616e616c797369732d757365722d3139"
    "63687226683d5b3a3a666666663a3132372e302e302e315d266f3d26723d26673d266d3d26523d76352e35"
    "2e3326783d787264637026793d26493d3426493d34"
)


def test_a_real_sss_login_is_verified_under_the_whole_name() -> None:
    m = xp.parse_map(SSS_LOGIN, xp.parse_header(SSS_LOGIN))
    assert (m.code, m.userid.user, m.cgi["p"], m.cgi["n"]) == (
        "u", "analysis", "sss", "analysis-user-19chr",
    )  # fmt: skip
    who = login_identity(m.userid.user, m.cgi, 1.0)
    assert (who.local, who.identity, who.auth) == ("analysis-user-19chr", "verified", "sss")


@given(st.integers(0, 50_000_000))
def test_pgwrite_payload_inverts_the_crc_overhead(size: int) -> None:
    assert pgwrite_payload(size + 4 * -(-size // 4096)) == size


def test_pgwrite_payload_examples() -> None:
    assert pgwrite_payload(1_049_605) == 1_048_577  # measured: xrdcp of a 1,048,577 B file
    assert pgwrite_payload(556_099) == 555_555
    assert pgwrite_payload(4_100) == 4_096
    assert pgwrite_payload(4_101) is None  # no payload gives it: not a pgwrite count


def fpacket(pseq: int, records: list[bytes], stod: int = 1000, t_end: int = 0) -> bytes:
    time_rec = struct.pack("!BBhIii", 2, 0, 16, 0, t_end - 1, t_end)
    body = time_rec + b"".join(records)
    return struct.pack("!cBHI", b"f", pseq, 8 + len(body), stod) + body


def open_rec(fid: int, user: int, write: bool = False) -> bytes:
    return struct.pack("!BBhIqI", 1, 1 | (2 if write else 0), 28, fid, 0, user) + b"/a\0\0\0\0\0\0"


def xfr_rec(fid: int, read: int, write: int = 0, final: bool = False) -> bytes:
    return struct.pack("!BBhIqqq", 0 if final else 3, 0, 32, fid, read, 0, write)


def disc_rec(user: int) -> bytes:
    return struct.pack("!BBhI", 4, 0, 8, user)


def test_xrdcp_uploads_count_their_payload_other_writers_their_bytes() -> None:
    m = Monitor(clock=lambda: 0.0)
    login = "&p=unix&n=nobody&x=xrdcp"
    m.feed_detail(map_packet("u", 0, 1, f"xroot/nobody.1:2@h\n{login}"), ADDR, 1.0)
    m.feed_detail(
        map_packet("u", 1, 2, "xroot/nobody.1:3@h\n&p=unix&n=nobody&x=root.exe"), ADDR, 1.0
    )
    recs = [open_rec(7, 1, True), xfr_rec(7, 0, 1_049_605, True)]
    recs += [open_rec(8, 2, True), xfr_rec(8, 0, 1_049_605, True)]
    m.feed_detail(fpacket(0, recs), ADDR, 1.0)
    t = m.users[("nobody", "remote", "verified", "unix")]
    assert t.values["written"] == 1_048_577 + 1_049_605  # the plain writer's bytes as sent


def test_a_restart_mid_file_counts_each_byte_once() -> None:
    def first_life() -> Monitor:
        m = Monitor(clock=lambda: 0.0)
        m.feed_detail(map_packet("u", 0, 1, "xroot/al.1:2@h\n&p=unix&n=al"), ADDR, 1.0)
        m.feed_detail(fpacket(0, [open_rec(9, 1), xfr_rec(9, 3 << 20)]), ADDR, 1.0)
        return m

    close = fpacket(1, [xfr_rec(9, 7 << 20, final=True), disc_rec(1)])
    m1 = first_life()
    m2 = Monitor(clock=lambda: 99.0)  # the agent restarted: state taken up from disk
    m2.restore(json.loads(json.dumps(m1.snapshot())))
    m2.feed_detail(close, ADDR, 100.0)
    key = ("al", "remote", "verified", "unix")
    assert m2.users[key].values["read"] == 7 << 20
    assert m2.users[key].created == m1.users[key].created  # the counter goes on, no reset
    assert not m2.errors and m2.seq["duplicate"] == 0
    m2.feed_detail(close, ADDR, 100.0)  # the same close again: a duplicate, not counted
    assert m2.users[key].values["read"] == 7 << 20
    # without the state: 3 MiB before, 7 MiB after to nobody known (what issue 17 saw)
    m3 = Monitor(clock=lambda: 99.0)
    m3.feed_detail(close, ADDR, 100.0)
    assert reads(m1)[("al", "remote")] + reads(m3)[(UNKNOWN_USER, "remote")] == 10 << 20


def test_unattributed_bytes_wait_until_settled_and_are_never_taken_back() -> None:
    m = Monitor({"vm:21094": "local"}, clock=lambda: 50.0)
    m.feed_detail(map_packet("=", 0, 0, "=/root.1:2@vm\n&port=21094"), ADDR, 60.0)
    m.feed_detail(map_packet("u", 1, 1, "xroot/root.1:2@h\n&p=unix&n=root"), ADDR, 60.0)
    m.feed_summary(summary(100, 201, 400, 30_000_000, 1), ADDR, 61.0)
    m.feed_detail(fpacket(0, [open_rec(3, 1)], t_end=201), ADDR, 61.0)
    series = {(s.metric, s.labels.get("direction")): s.values[0] for s in m.series("n", 62.0)}
    assert series[("xrootd_unattributed_bytes", "out")] == 0  # a file is open: not settled
    m.feed_detail(fpacket(1, [xfr_rec(3, 0, final=True), disc_rec(1)], t_end=203), ADDR, 63.0)
    m.feed_summary(summary(100, 203, 500, 54_580_303, 1), ADDR, 63.0)  # tod == f window end
    m.reconcile(64.0)
    assert m.servers["10.0.0.7:21094"].values["unattributed_out"] == 0  # not newer: wait
    m.feed_summary(summary(100, 204, 500, 54_580_303, 1), ADDR, 64.0)
    m.reconcile(65.0)
    v = m.servers["10.0.0.7:21094"].values
    assert (v["unattributed_out"], v["unattributed_in"]) == (54_580_303, 500)
    assert v["read"] + v["unattributed_out"] == v["link_out"]  # the server's own total


def test_probe_checkpoints_and_takes_up_its_state(tmp_path: Path) -> None:
    path = tmp_path / "xrootd-probe.json"

    def probe() -> XRootDProbe:
        socks = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return XRootDProbe("n1", Monitor(), sockets=(socks[0], socks[1]), state_path=path)

    p1 = probe()
    p1.start()
    assert p1._sockets is not None  # noqa: SLF001
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        sender = tx.getsockname()
        for pkt in REAL[:4]:
            tx.sendto(pkt, p1._sockets[1].getsockname())  # noqa: SLF001
    p1.close()  # stops, applies what was queued, checkpoints
    assert json.loads(path.read_text())["packets"]["detail"] == 4
    p2 = probe()
    assert p2.monitor.packets["detail"] == 4
    p2.monitor.feed_detail(REAL[4], sender, 2.0)  # the f packet arrives after the restart
    assert p2.monitor.errors["unknown_user"] == 0
    path.write_text("{not json")
    p3 = probe()  # an unreadable state starts afresh, counted
    assert p3.monitor.errors["state_unusable"] == 1 and p3.monitor.packets["detail"] == 0
    for p in (p2, p3):
        p.close()


# -- fuzzing -----------------------------------------------------------------------------------

CAPS = {"max_servers": 4, "max_files": 16, "max_users": 16}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_bounded(m: Monitor) -> None:
    assert len(m.streams) <= CAPS["max_servers"] and len(m.summaries) <= CAPS["max_servers"]
    assert len(m.users) <= CAPS["max_users"] and len(m.servers) <= CAPS["max_servers"]
    for s in m.streams.values():
        assert len(s.files) <= CAPS["max_files"] and len(s.paths) <= CAPS["max_files"]
        assert len(s.users) <= CAPS["max_users"] and len(s.by_userid) <= CAPS["max_users"]


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_garbage_never_raises_and_is_counted(packets: list[bytes]) -> None:
    m = Monitor(**CAPS, clock=lambda: 0.0)
    for p in packets:
        m.feed_detail(p, ADDR, 1.0)
        m.feed_summary(p, ADDR, 1.0)
    assert m.packets["detail"] == m.packets["summary"] == len(packets)
    short = sum(1 for p in packets if len(p) < 8)
    assert m.errors["truncated"] >= short
    assert sum(m.errors.values()) >= 2 * short  # a short packet is bad XML too
    assert_bounded(m)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from("=udTfitrgx"),
            st.integers(0, 255),
            st.integers(0, 3),
            st.binary(max_size=200),
            st.sampled_from([40001, 40002, 40003, 40004, 40005, 40006]),
        ),
        max_size=60,
    )
)
def test_well_framed_random_bodies_stay_bounded(
    packets: list[tuple[str, int, int, bytes, int]],
) -> None:
    m = Monitor(**CAPS, clock=lambda: 0.0)
    for code, pseq, stod, body, port in packets:
        data = struct.pack("!cBHI", code.encode(), pseq, 8 + len(body), stod) + body
        m.feed_detail(data, ("10.0.0.7", port), 1.0)
    assert m.errors["internal"] == 0
    assert_bounded(m)
    assert all(v >= 0 for t in m.users.values() for v in t.values.values())


@FUZZ
@given(st.permutations(list(range(len(REAL)))), st.lists(st.integers(0, len(REAL) - 1), max_size=4))
def test_reordered_and_repeated_real_packets_never_count_more(
    order: list[int],
    repeats: list[int],
) -> None:
    m = Monitor(clock=lambda: 0.0)
    for i in [*order, *repeats]:
        m.feed_detail(REAL[i], ADDR, 1.0)
    got = reads(m)
    assert sum(got.values()) == F1 + F2  # the f packet is applied exactly once
    assert set(got) <= {
        ("asserted:root", "remote"),
        ("asserted:nobody", "remote"),
        (UNKNOWN_USER, "remote"),
    }
    assert m.seq["duplicate"] == len(repeats)
    assert m.errors["internal"] == 0


@FUZZ
@given(st.integers(0, len(REAL) - 1), st.data())
def test_truncated_oversized_and_flipped_real_packets(i: int, data: st.DataObject) -> None:
    m = Monitor(**CAPS, clock=lambda: 0.0)
    p = REAL[i]
    cut = data.draw(st.integers(0, len(p) - 1))
    m.feed_detail(p[:cut], ADDR, 1.0)
    m.feed_detail(p + data.draw(st.binary(min_size=1, max_size=64)), ADDR, 1.0)
    m.feed_detail(p + b"\0" * 70_000, ADDR, 1.0)
    assert m.errors["truncated"] == 1 and m.errors["length_mismatch"] == 1
    assert m.errors["oversized"] == 1
    pos = data.draw(st.integers(8, len(p) - 1))
    flipped = p[:pos] + bytes([p[pos] ^ data.draw(st.integers(1, 255))]) + p[pos + 1 :]
    m.feed_detail(flipped, ADDR, 1.0)
    assert m.errors["internal"] == 0
    assert_bounded(m)


@pytest.mark.parametrize(
    "bad",
    [
        b'<!DOCTYPE x [<!ENTITY a "aaaa">]><statistics tos="1">&a;</statistics>',
        b"<statistics>",
        b'<other tos="1"/>',
        b'<statistics tos="x"/>',
        b'<statistics tos="1"><stats id="link"><in>1e9</in></stats></statistics>',
    ],
)
def test_bad_summaries_are_counted(bad: bytes) -> None:
    m = Monitor(clock=lambda: 0.0)
    m.feed_summary(bad, ADDR, 1.0)
    assert m.errors["bad_xml"] == 1 and not m.servers
