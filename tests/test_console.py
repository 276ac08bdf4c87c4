"""The console reader of an instance (engine/console.py): pure logic, a real pipe."""

from __future__ import annotations

import os

from stdpkt_lab.engine.console import Marker, keep_in_tail, read_console, worth_showing


def test_console_lines_markers_stack_dumps_and_boot_noise_are_told_apart() -> None:
    r, w = os.pipe()
    os.write(w, b"\x1b[1mhello\x1b[0m\r\n@@STDPKT READY\nCall Trace:\r\nLinux version 6.1\n\xff\n")
    os.close(w)
    lines = list(read_console(r))
    assert lines == ["hello", Marker("READY"), "Call Trace:", "Linux version 6.1", "\ufffd"]
    assert keep_in_tail("hello") and not keep_in_tail("Call Trace:")
    assert worth_showing("hello") and not worth_showing("Linux version 6.1") and not worth_showing("")
