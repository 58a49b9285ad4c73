"""Input data formats at the node: the XRootD monitor classifies each opened file's LFN (from
the f-stream open record) and labels the member's series with the format; the path itself is
in no series. Patterns: collectors/probes/data_formats.py, docs/data.md."""

from __future__ import annotations

import struct

import pytest

from afmon.collectors.probes.data_formats import FORMATS, FormatClassifier
from afmon.collectors.probes.xrootd import Monitor
from afmon.collectors.settings import AgentSettings
from tests.collectors.test_probe_xrootd_packets import ADDR, fpacket, map_packet, xfr_rec

ATLAS = "/atlas/rucio/mc20_13TeV/DAOD_PHYSLITE.37622528._000013.pool.root.1"
PATHS = {
    ATLAS: "physlite",
    "/atlas/rucio/data18_13TeV/DAOD_PHYS.28625041._000001.pool.root.1": "daod",
    "/atlas/rucio/mc16_13TeV/AOD.12345678._000001.pool.root.1": "aod",
    "/store/mc/RunIISummer20UL18MiniAODv2/TTJets/MINIAODSIM/106X/2520000/A1.root": "miniaod",
    "/store/data/Run2018A/SingleMuon/NANOAOD/UL2018_MiniAODv2_NanoAODv9-v2/B2.root": "nanoaod",
    "/store/mc/Run3Summer22DRPremix/DYto2L/AODSIM/124X/C3.root": "aod",
    "/store/user/alice/skim/ntuple_7.root": "ntuple",
    "/eos/user/a/alice/hists.root": "ntuple",
    "/atlas/rucio/user.alice/user.alice.12345._000001.tree.root": "ntuple",
    "/data/calibration/run.txt": "other",
}


@pytest.mark.parametrize("path", PATHS)
def test_default_patterns_classify_atlas_and_cms_names(path: str) -> None:
    assert FormatClassifier()(path) == PATHS[path]


def test_patterns_are_a_setting_and_refuse_unknown_formats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AFMON_XROOTD_FORMAT_PATTERNS", '[["ntuple", "\\\\.root$"]]')
    patterns = AgentSettings().xrootd_format_patterns
    assert FormatClassifier(patterns)(ATLAS) == "other"  # .root.1 does not end in .root
    assert FormatClassifier(patterns)("/x/y.root") == "ntuple"
    with pytest.raises(ValueError, match="unknown data format 'raw'"):
        FormatClassifier([("raw", "RAW")])
    assert set(FORMATS) == {"physlite", "daod", "aod", "miniaod", "nanoaod", "ntuple", "other"}


def _open(fid: int, user: int, lfn: str) -> bytes:
    path = lfn.encode() + b"\0"
    path += b"\0" * (-len(path) % 4)
    return struct.pack("!BBhIqI", 1, 1, 20 + len(path), fid, 0, user) + path


def test_the_monitor_labels_each_members_bytes_with_the_format() -> None:
    m = Monitor(clock=lambda: 0.0, formats=FormatClassifier())
    m.feed_detail(map_packet("u", 0, 1, "xroot/alice.1:2@h\n&p=unix&n=alice"), ADDR, 1.0)
    cms = "/store/data/Run2018A/SingleMuon/NANOAOD/UL2018/B2.root"
    recs = [_open(7, 1, ATLAS), xfr_rec(7, 3_000_000, 0, True)]
    recs += [_open(8, 1, cms), xfr_rec(8, 1_000_000, 0, True)]
    recs += [_open(9, 1, "/store/user/alice/ntuple_1.root"), xfr_rec(9, 500, 0, True)]
    m.feed_detail(fpacket(0, recs), ADDR, 1.0)
    series = m.series("node-1", 2.0)
    got = {
        (s.metric, s.labels["format"]): s.values[-1]
        for s in series
        if s.metric in ("user_data_read_bytes", "user_files_opened")
    }
    assert got == {
        ("user_data_read_bytes", "physlite"): 3_000_000,
        ("user_files_opened", "physlite"): 1,
        ("user_data_read_bytes", "nanoaod"): 1_000_000,
        ("user_files_opened", "nanoaod"): 1,
        ("user_data_read_bytes", "ntuple"): 500,
        ("user_files_opened", "ntuple"): 1,
    }
    sent = repr([s.labels for s in series])
    assert "DAOD_PHYSLITE" not in sent and "/store" not in sent  # no path leaves the node
    # a checkpoint keeps the formats apart
    m2 = Monitor(clock=lambda: 0.0, formats=FormatClassifier())
    m2.restore(m.snapshot())
    assert m2.users[("alice", "remote", "verified", "unix", "physlite")].values["read"] == 3e6


def test_without_a_classifier_the_series_carry_no_format() -> None:
    m = Monitor(clock=lambda: 0.0)
    m.feed_detail(map_packet("u", 0, 1, "xroot/bob.1:2@h\n&p=unix&n=bob"), ADDR, 1.0)
    m.feed_detail(fpacket(0, [_open(7, 1, ATLAS), xfr_rec(7, 10, 0, True)]), ADDR, 1.0)
    assert all("format" not in s.labels for s in m.series("node-1", 2.0))
