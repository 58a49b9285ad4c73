"""Pure parsers for XRootD's monitoring packets (no sockets, no state).

Two streams, both UDP (docs/data.md, and XRootD's XrdXrootdMonData.hh):

* the summary stream (`xrd.report`): one XML document per packet, counters cumulative since
  the server started (`tos`);
* the detailed stream (`xrootd.monitor`): binary, network byte order. Every packet starts with
  an 8-byte header (code, pseq, plen, stod). Map packets (`=` server, `u` user login, `T` token,
  `d` path, `i` appinfo, ...) carry a dictid and `userid\\ninfo`; the f-stream (`f`) carries
  file records: open, close, transfer (xfr), time and disconnect.

Every parser raises `PacketError(reason)` for input it cannot use; nothing else escapes.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

HEADER = struct.Struct("!cBHI")  # code, pseq, plen, stod
REC_HEADER = struct.Struct("!BBhI")  # recType, recFlag, recSize, fileID/userID
I64x3 = struct.Struct("!qqq")
MAP_CODES = frozenset("=dipTuUx")  # map packets: header, dictid, "userid\ninfo"

# f-stream record types and flags (bit masks; test with &)
REC_CLOSE, REC_OPEN, REC_TIME, REC_XFR, REC_DISC = 0, 1, 2, 3, 4
OPEN_HAS_LFN = 0x01
OPEN_HAS_RW = 0x02
CLOSE_FORCED = 0x01
TIME_HAS_SID = 0x01
MAX_PACKET = 65536


class PacketError(ValueError):
    """A packet that cannot be used; `reason` is a short, bounded label for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    code: str
    pseq: int
    plen: int
    stod: int


@dataclass(frozen=True)
class UserId:
    """`[prot/]user.pid:sid@host`, as XRootD names a client connection."""

    prot: str
    user: str
    pid_sid: str
    host: str


@dataclass(frozen=True)
class MapPacket:
    code: str
    dictid: int
    userid: UserId
    raw_userid: str
    info: str  # the text after the newline: CGI (`&k=v...`) for u/T/=, a path for d
    cgi: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenRec:
    file_id: int
    size: int
    write: bool
    user_dictid: int | None
    lfn: str | None


@dataclass(frozen=True)
class XferRec:
    """Close (final) or xfr (progress) record: cumulative bytes of the file so far."""

    file_id: int
    read: int
    readv: int
    write: int
    final: bool
    forced: bool = False


@dataclass(frozen=True)
class DiscRec:
    user_dictid: int


@dataclass(frozen=True)
class TimeRec:
    t_begin: int
    t_end: int
    sid: int | None


Record = OpenRec | XferRec | DiscRec | TimeRec


@dataclass(frozen=True)
class Summary:
    """The parts of one summary packet that afmon uses; None where the packet has no such item."""

    src: str
    host: str
    port: int | None
    tos: int
    tod: int
    pgm: str
    ins: str
    pid: str
    site: str
    link_in: int | None
    link_out: int | None
    opens: int | None
    reads: int | None
    readvs: int | None
    writes: int | None


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER.size:
        raise PacketError("truncated", f"{len(data)} bytes, shorter than the header")
    if len(data) > MAX_PACKET:
        raise PacketError("oversized", f"{len(data)} bytes")
    code, pseq, plen, stod = HEADER.unpack_from(data)
    if plen != len(data):
        reason = "truncated" if plen > len(data) else "length_mismatch"
        raise PacketError(reason, f"header says {plen} bytes, packet has {len(data)}")
    return Header(code.decode("latin-1"), pseq, plen, stod)


def parse_cgi(text: str) -> dict[str, str]:
    """`&k=v&k2=v2` -> dict (the first value of a repeated key wins)."""
    out: dict[str, str] = {}
    for part in text.split("&"):
        key, sep, value = part.partition("=")
        if sep and key and key not in out:
            out[key] = value
    return out


def parse_userid(text: str) -> UserId:
    left, at, host = text.rpartition("@")
    if not at:
        left, host = text, ""
    prot, slash, rest = left.partition("/")
    if not slash:
        prot, rest = "", left
    user, dot, pid_sid = rest.rpartition(".")
    if not dot:
        user, pid_sid = rest, ""
    return UserId(prot, user, pid_sid, host)


def parse_map(data: bytes, header: Header) -> MapPacket:
    if len(data) < HEADER.size + 4:
        raise PacketError("truncated", "map packet without a dictid")
    (dictid,) = struct.unpack_from("!I", data, HEADER.size)
    body = data[HEADER.size + 4 :].rstrip(b"\0").decode("utf-8", errors="replace")
    raw_userid, _nl, info = body.partition("\n")
    if not raw_userid:
        raise PacketError("bad_map", f"{header.code!r} packet without a user id")
    cgi = parse_cgi(info) if header.code in "=uTi" else {}
    return MapPacket(header.code, dictid, parse_userid(raw_userid), raw_userid, info, cgi)


def parse_fstream(data: bytes) -> list[Record]:
    """All records of one f-stream packet, or PacketError: a packet is used whole or not at all."""
    records: list[Record] = []
    off, end = HEADER.size, len(data)
    while off < end:
        if off + REC_HEADER.size > end:
            raise PacketError("bad_record", f"record header cut at byte {off}")
        rtype, rflag, rsize, ident = REC_HEADER.unpack_from(data, off)
        if rsize < REC_HEADER.size or off + rsize > end:
            raise PacketError("bad_record", f"record size {rsize} at byte {off}")
        rec = data[off : off + rsize]
        records.append(_record(rtype, rflag, ident, rec))
        off += rsize
    return records


def _record(rtype: int, rflag: int, ident: int, rec: bytes) -> Record:
    size = len(rec)
    if rtype in (REC_CLOSE, REC_XFR):
        if size < 32:
            raise PacketError("bad_record", f"transfer record of {size} bytes")
        read, readv, write = I64x3.unpack_from(rec, 8)
        if min(read, readv, write) < 0:
            raise PacketError("bad_record", "negative byte count")
        final = rtype == REC_CLOSE
        return XferRec(ident, read, readv, write, final, final and bool(rflag & CLOSE_FORCED))
    if rtype == REC_OPEN:
        if size < 16:
            raise PacketError("bad_record", f"open record of {size} bytes")
        (fsz,) = struct.unpack_from("!q", rec, 8)
        user: int | None = None
        lfn: str | None = None
        if rflag & OPEN_HAS_LFN:
            if size < 21:
                raise PacketError("bad_record", "open record too short for its user and path")
            (user,) = struct.unpack_from("!I", rec, 16)
            lfn = rec[20:].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return OpenRec(ident, max(fsz, 0), bool(rflag & OPEN_HAS_RW), user, lfn)
    if rtype == REC_TIME:
        if size < 16:
            raise PacketError("bad_record", f"time record of {size} bytes")
        t_begin, t_end = struct.unpack_from("!ii", rec, 8)
        sid = struct.unpack_from("!q", rec, 16)[0] if rflag & TIME_HAS_SID and size >= 24 else None
        return TimeRec(t_begin, t_end, sid)
    if rtype == REC_DISC:
        return DiscRec(ident)
    raise PacketError("unknown_record", f"record type {rtype}")


def _int(node: ET.Element | None, path: str) -> int | None:
    if node is None:
        return None
    found = node.find(path)
    if found is None or found.text is None:
        return None
    try:
        return int(found.text.strip())
    except ValueError:
        raise PacketError("bad_xml", f"{path} is not an integer") from None


def parse_summary(data: bytes) -> Summary:
    if len(data) > MAX_PACKET:
        raise PacketError("oversized", f"{len(data)} bytes")
    if b"<!" in data:  # no DTDs, no entities: a summary never has them
        raise PacketError("bad_xml", "DOCTYPE or ENTITY in a summary packet")
    try:
        root = ET.fromstring(data.rstrip(b"\0"))
    except (ET.ParseError, ValueError) as exc:
        raise PacketError("bad_xml", str(exc)[:80]) from None
    if root.tag != "statistics":
        raise PacketError("bad_xml", f"root element <{root.tag[:40]}>, not <statistics>")
    a = root.attrib
    try:
        tos, tod = int(a["tos"]), int(a.get("tod", "0"))
    except (KeyError, ValueError):
        raise PacketError("bad_xml", "statistics without an integer tos") from None
    src = a.get("src", "")
    host, _colon, port_text = src.rpartition(":")
    port = int(port_text) if port_text.isdigit() else None
    stats = {s.get("id"): s for s in root.findall("stats")}
    link, xrd = stats.get("link"), stats.get("xrootd")
    return Summary(
        src=src,
        host=host if port is not None else src,
        port=port,
        tos=tos,
        tod=tod,
        pgm=a.get("pgm", ""),
        ins=a.get("ins", ""),
        pid=a.get("pid", ""),
        site=a.get("site", ""),
        link_in=_int(link, "in"),
        link_out=_int(link, "out"),
        opens=_int(xrd, "ops/open"),
        reads=_int(xrd, "ops/rd"),
        readvs=_int(xrd, "ops/rv"),
        writes=_int(xrd, "ops/wr"),
    )
