"""The extended XYZ pre-scan (`serving/http/extxyz.scan`) walks frames as ASE's reader does and
refuses what is over the limits before ASE reads anything (the attacks themselves, against a real
server, are in test_http_limits.py)."""
from __future__ import annotations

import pytest

from aceserver.serving.http.error_replies import APIError, DecodeError
from aceserver.serving.http.extxyz import scan


def test_extxyz_scan_walks_frames_as_ase_does():
    frame = b"2\nLattice=\"5 0 0 0 5 0 0 0 5\"\nSi 0 0 0\nSi 1 1 1\n"
    assert scan(frame * 3, 100, 10) == 3
    assert scan(frame + b"\n\ntrailing text after a blank line ends the frames", 100, 10) == 1
    assert scan(b"1\n\nSi 0 0 0\nVEC1 1 0 0\nVEC2 0 1 0\n" + frame, 100, 10) == 2      # VEC lines skipped
    assert scan(b"1\nProperties=species:S:1:pos:R:3:forces:R:3\nSi 0 0 0 0 0 0", 100, 10) == 1  # no final newline
    with pytest.raises(DecodeError, match="ends after 1"):
        scan(b"3\n\nSi 0 0 0\n", 100, 10)
    with pytest.raises(DecodeError, match="atom count"):
        scan(b"two\n\nSi 0 0 0\n", 100, 10)
    with pytest.raises(APIError, match="longer than 65536 bytes"):
        scan(b"1\n" + b"x" * 70_000 + b"\nSi 0 0 0\n", 100, 10)
    with pytest.raises(APIError, match="more than 2 frames"):
        scan(frame * 3, 100, 2)
