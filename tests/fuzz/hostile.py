"""Hostile snapshot files: one builder per attack of issue 10 (and the byte-level items of issue 9).

Each builder returns the file's bytes. Small ones are also committed under ``tests/data/hostile/``
(``python tests/fuzz/hostile.py`` rewrites them); the bombs (10 MB of gzip expanding to 10 GiB)
are built at test time from repeated gzip members, which takes well under a second each.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path
from typing import Callable

HOSTILE_DIR = Path(__file__).resolve().parents[1] / "data" / "hostile"

P4 = b"\x80\x04"


def _entry_snapshot(frame_key: object = "line", filename: object = "/m.py", pool: object = (0, 0), ann: object = "fwd") -> dict:
    frame = {"filename": filename, "line": 1, "name": "f", frame_key: 1} if frame_key != "line" else {"filename": filename, "line": 1, "name": "f"}
    return {
        "segments": [{"device": 0, "address": 0, "total_size": 1024, "stream": 0, "segment_type": "small",
                      "segment_pool_id": pool, "blocks": [{"address": 0, "size": 1024, "state": "active_allocated", "frames": []}]}],
        "device_traces": [[{"action": "alloc", "addr": 0, "size": 1024, "stream": 0, "time_us": 1, "frames": [frame]}]],
        "external_annotations": [{"device": 0, "stage": "START", "name": ann, "time_us": 1}],
    }


_MARK = "QQQQPLACEHOLDERQQQQ"


def _splice(obj: dict, payload: bytes) -> bytes:
    """Pickle ``obj`` (protocol 2: no FRAMEs to fix up) with the placeholder string replaced by ``payload`` opcodes."""
    data = pickle.dumps(obj, protocol=2)
    needle = b"X" + struct.pack("<I", len(_MARK)) + _MARK.encode()
    assert data.count(needle) == 1, data.count(needle)
    return data.replace(needle, payload)


def deep_tuple(n: int) -> bytes:
    return b")" + b"\x85" * n


def deep_list(n: int) -> bytes:
    return b"]" * n + b"a" * (n - 1)


# --- nesting -------------------------------------------------------------------------------


def deep_tuple_key() -> bytes:
    """~130k nested empty tuples as a dict key: CPython's tuple hash overflows the C stack."""
    return P4 + b"}" + deep_tuple(130_000) + b"K\x01s."


def deep_frozenset_member() -> bytes:
    return P4 + b"}(" + deep_tuple(130_000) + b"\x91K\x01s."


def deep_tuple_frame_key() -> bytes:
    """A 1M-deep tuple as a key of a frame dict inside a trace entry."""
    return _splice(_entry_snapshot(frame_key=_MARK), deep_tuple(1_000_000))


def deep_list_filename() -> bytes:
    return _splice(_entry_snapshot(filename=_MARK), deep_list(100_000))


def deep_list_pool_id() -> bytes:
    return _splice(_entry_snapshot(pool=_MARK), deep_list(100_000))


def deep_list_annotation() -> bytes:
    return _splice(_entry_snapshot(ann=_MARK), deep_list(100_000))


def deep_json() -> bytes:
    return b"[" * 2000 + b"]" * 2000


# --- memo ----------------------------------------------------------------------------------


def memo_2_29() -> bytes:
    """9 bytes: one LONG_BINPUT at index 2^29 (the pure loader's memo grew past 5 GiB)."""
    return P4 + b"N" + b"r" + struct.pack("<I", 1 << 29) + b"."


def memo_ladder() -> bytes:
    """Ten LONG_BINPUTs, each just under the old C loader's growth guard (54 bytes)."""
    out, memolen = bytearray(P4 + b"N"), 0
    for _ in range(10):
        idx = memolen * 2 + (1 << 20)
        out += b"r" + struct.pack("<I", min(idx, 2**32 - 1))
        cap = memolen or 1024
        while cap <= idx:
            cap += cap // 2
        memolen = cap
    return bytes(out + b".")


# --- expansion by shared references --------------------------------------------------------


def shared_trace_100k() -> bytes:
    """One 10k-entry list referenced 100k times in device_traces (10^9 rows)."""
    trace = [{"action": "alloc", "addr": i, "size": 1, "stream": 0, "time_us": i} for i in range(10_000)]
    return pickle.dumps({"segments": [], "device_traces": [trace] * 100_000}, protocol=4)


def shared_trace_4k() -> bytes:
    """The same within the device bound: 4,000 devices x 10k entries = 4*10^7 rows from one list."""
    trace = [{"action": "alloc", "addr": i, "size": 1, "stream": 0, "time_us": i} for i in range(10_000)]
    return pickle.dumps({"segments": [], "device_traces": [trace] * 4_000}, protocol=4)


def shared_segments_blocks_frames() -> bytes:
    """segments x blocks x frames shared by reference: 1000^3 frame visits from ~22 KB."""
    frames = [{"filename": "/m.py", "line": 1, "name": "f"}] * 1000
    block = {"address": 0, "size": 1, "state": "active_allocated", "frames": frames}
    seg = {"device": 0, "address": 0, "total_size": 1, "stream": 0, "blocks": [block] * 1000}
    return pickle.dumps({"segments": [seg] * 1000, "device_traces": [[{"action": "alloc", "addr": 0, "size": 1}]]}, protocol=4)


# --- devices, empty, lengths ---------------------------------------------------------------


def _device(d: int) -> bytes:
    snap = _entry_snapshot()
    snap["segments"][0]["device"] = d
    return pickle.dumps(snap, protocol=4)


def device_1e9() -> bytes:
    return _device(10**9)


def device_2_40() -> bytes:
    return _device(2**40)


def device_2_62() -> bytes:
    return _device(2**62)


def empty_list_json() -> bytes:
    return b"[]"


def empty_list_pickle() -> bytes:
    return pickle.dumps([], protocol=4)


def frame_len_2_63() -> bytes:
    return P4 + b"\x95" + struct.pack("<Q", (1 << 63) + 5) + b"N."


def binbytes8_2_63() -> bytes:
    return P4 + b"\x8e" + struct.pack("<Q", (1 << 63) + 5) + b"abc."


def binbytes8_2_64_minus_1() -> bytes:
    return P4 + b"\x8e" + struct.pack("<Q", 2**64 - 1) + b"abc."


# --- terminal injection --------------------------------------------------------------------


INJECTED = "memprof: OK, snapshot is clean"


def terminal_injection_global() -> bytes:
    """A global whose name erases the line and prints a fake all-clear."""
    name = f"system\x1b[2K\r{INJECTED}\x1b[8m"
    return b"\x80\x02c" + b"os\n" + name.encode() + b"\n)R."


def terminal_injection_frame() -> bytes:
    """A valid snapshot whose frame name, annotation name and phase label carry escape sequences."""
    snap = {
        "segments": [],
        "device_traces": [[{"action": "alloc", "addr": 0, "size": 1 << 20, "stream": 0, "time_us": 1,
                            "user_metadata": f"memprof/fwd\n{INJECTED}/0",
                            "frames": [{"filename": "/u/x.py\x1b]0;pwned\x07", "line": 1, "name": f"f\x1b[2K\r{INJECTED}\n"}]}]],
        "external_annotations": [{"device": 0, "stage": "START", "name": f"memprof/x\n{INJECTED}/0", "time_us": 1}],
    }
    return pickle.dumps(snap, protocol=4)


# --- the two loaders' disagreements --------------------------------------------------------


def small_snapshot() -> dict:
    return {
        "segments": [{"device": 0, "address": 0, "total_size": 2 << 20, "stream": 0,
                      "blocks": [{"address": 0, "size": 1 << 20, "state": "active_allocated", "frames": []}]}],
        "device_traces": [[{"action": "alloc", "addr": 0, "size": 1 << 20, "stream": 0, "time_us": 1,
                            "frames": [{"filename": "/u/x.py", "line": 3, "name": "f"}]},
                           {"action": "free_completed", "addr": 0, "size": 1 << 20, "stream": 0, "time_us": 2}]],
    }


def frame_len_short() -> bytes:
    """A FRAME that announces more bytes than the file holds (the C loader used to ignore it)."""
    data = pickle.dumps(small_snapshot(), protocol=4)
    i = data.index(b"\x95")
    n = struct.unpack("<Q", data[i + 1 : i + 9])[0]
    return data[: i + 1] + struct.pack("<Q", n + 1000) + data[i + 9 :]


def gzip_trailing_garbage() -> bytes:
    return gzip.compress(pickle.dumps(small_snapshot(), protocol=4), mtime=0) + b"GARBAGE!"


def duplicated_action_key() -> bytes:
    """An entry dict whose 'action' key is set twice (unknown first, then 'alloc'): the last wins."""
    data = pickle.dumps(small_snapshot(), protocol=2)
    needle = b"X\x06\x00\x00\x00actionq"
    i = data.index(needle)
    # insert "action": "bogus" before the real key/value pair of the first entry (same SETITEMS batch)
    extra = b"X\x06\x00\x00\x00actionX\x05\x00\x00\x00bogus"
    return data[:i] + extra + data[i:]


# --- found by the fuzz harness (loaders disagreed before the rules above) -------------------


def fuzz_frame_straddle() -> bytes:
    """The FRAME ends inside the argument of its last string: that opcode straddles the frame's end
    (pickle's C unpickler then skips bytes and reads on; its pure-Python one refuses)."""
    import pickletools

    data = pickle.dumps(small_snapshot(), protocol=4)
    i = data.index(b"\x95")
    last = max(pos for op, _arg, pos in pickletools.genops(data) if op.name == "SHORT_BINUNICODE")
    return data[: i + 1] + struct.pack("<Q", last + 3 - (i + 9)) + data[i + 9 :]


def fuzz_frame_nested() -> bytes:
    """The first FRAME claims bytes past where the second FRAME opcode begins."""
    snap = small_snapshot()
    snap["allocator_settings"] = {"pad": "x" * 70_000, "more": list(range(100))}
    data = pickle.dumps(snap, protocol=4)
    i = data.index(b"\x95")
    n = struct.unpack("<Q", data[i + 1 : i + 9])[0]
    assert data.count(b"\x95") >= 2
    return data[: i + 1] + struct.pack("<Q", n + 20) + data[i + 9 :]


def fuzz_state_is_the_root() -> bytes:
    """A block's 'state' is the root dict itself (a memo reference): its repr differs by loader."""
    snap = small_snapshot()
    snap["segments"][0]["blocks"][0]["state"] = snap
    return pickle.dumps(snap, protocol=4)


def fuzz_bad_utf8() -> bytes:
    """Invalid UTF-8 in a string: the C loader refused it while the pure scan went on to a limit."""
    data = pickle.dumps(small_snapshot(), protocol=4)
    i = data.index(b"\x8c\x08segments")
    return data[: i + 2] + b"\xffegments" + data[i + 10 :] + b"r\x00\x00\x00\x40"


def memo_mutated_deep_list(n: int = 3000, cycle: bool = False) -> bytes:
    """allocator_settings = {"x": L0} with L0 -> L1 -> ... -> Ln, each list appended to its parent only after
    being added itself (memo copies): a depth counted as items are added sees 2, the real depth is n."""
    def get(k: int) -> bytes:
        return b"h" + bytes([k]) if k < 256 else b"j" + struct.pack("<I", k)

    out = bytearray(P4 + b"}")  # root
    out += b"\x8c\x0ddevice_traces" + b"]]" + b"}\x8c\x06action\x8c\x05allocsa" + b"a" + b"s"  # one entry
    out += b"\x8c\x12allocator_settings}\x8c\x01x" + b"]\x94"  # {"x": L0}; L0 = memo 0, stays on the stack
    out += b"]\x940" * n  # L1..Ln: memo 1..n
    for k in range(n):
        out += get(k) + get(k + 1) + b"a0"
    if cycle:
        out += get(n) + get(0) + b"a0"
    out += b"ss."
    return bytes(out)


def memo_mutated_cycle() -> bytes:
    return memo_mutated_deep_list(10, cycle=True)


# --- issue 9: integers and format by bytes -------------------------------------------------


def line_2_64_minus_1() -> bytes:
    snap = small_snapshot()
    snap["device_traces"][0][0]["frames"][0]["line"] = 2**64 - 1
    snap["segments"][0]["address"] = 2**64 - 4096
    snap["segments"][0]["blocks"][0]["address"] = 2**64 - 4096
    return pickle.dumps(snap, protocol=4)


#: name -> (builder, what the one-line message must mention; None: any clean refusal)
SMALL: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "deep_tuple_key.pickle": (deep_tuple_key, "levels deep"),
    "deep_frozenset_member.pickle": (deep_frozenset_member, "levels deep"),
    "deep_tuple_frame_key.pickle": (deep_tuple_frame_key, "levels deep"),
    "deep_list_filename.pickle": (deep_list_filename, "levels deep"),
    "deep_list_pool_id.pickle": (deep_list_pool_id, "levels deep"),
    "deep_list_annotation.pickle": (deep_list_annotation, "levels deep"),
    "deep.json": (deep_json, "levels deep"),
    "memo_2_29.pickle": (memo_2_29, "memo index"),
    "memo_ladder.pickle": (memo_ladder, "memo index"),
    "shared_trace_100k.pickle": (shared_trace_100k, "devices"),
    "shared_trace_4k.pickle": (shared_trace_4k, "MEMPROF_MAX_ROWS"),
    "shared_segments_blocks_frames.pickle": (shared_segments_blocks_frames, "MEMPROF_MAX_ROWS"),
    "device_1e9.pickle": (device_1e9, "devices 0..4095"),
    "device_2_40.pickle": (device_2_40, "devices 0..4095"),
    "device_2_62.pickle": (device_2_62, "devices 0..4095"),
    "empty_list.json": (empty_list_json, None),
    "empty_list.pickle": (empty_list_pickle, None),
    "frame_len_2_63.pickle": (frame_len_2_63, "MEMPROF_MAX_BYTES"),
    "binbytes8_2_63.pickle": (binbytes8_2_63, "MEMPROF_MAX_BYTES"),
    "binbytes8_2_64_minus_1.pickle": (binbytes8_2_64_minus_1, "MEMPROF_MAX_BYTES"),
    "terminal_injection_global.pickle": (terminal_injection_global, "refused"),
    "frame_len_short.pickle": (frame_len_short, None),
    "gzip_trailing_garbage.pickle.gz": (gzip_trailing_garbage, "corrupt"),
    "fuzz_frame_straddle.pickle": (fuzz_frame_straddle, "FRAME"),
    "fuzz_frame_nested.pickle": (fuzz_frame_nested, "FRAME"),
    "fuzz_state_is_the_root.pickle": (fuzz_state_is_the_root, "'state' holds a dict"),
    "fuzz_bad_utf8.pickle": (fuzz_bad_utf8, "utf-8"),
    "memo_mutated_deep_list.pickle": (memo_mutated_deep_list, "levels deep"),
    "memo_mutated_cycle.pickle": (memo_mutated_cycle, "refers to itself"),
}

#: Files that must load (identically on both paths).
GOOD: dict[str, Callable[[], bytes]] = {
    "duplicated_action_key.pickle": duplicated_action_key,
    "line_2_64_minus_1.pickle": line_2_64_minus_1,
    "terminal_injection_frame.pickle": terminal_injection_frame,
}


# --- bombs (built at test time) ------------------------------------------------------------

GiB = 1 << 30
_CHUNK = 64 << 20


def _repeat_member(head: bytes, unit: bytes, total: int, tail: bytes) -> bytes:
    """gzip of head + unit * (total // len(unit)) + tail, built from one compressed 64 MiB member."""
    reps_per_chunk = _CHUNK // len(unit)
    member = gzip.compress(unit * reps_per_chunk, compresslevel=9, mtime=0)
    n = max(1, total // (reps_per_chunk * len(unit)))
    return gzip.compress(head, mtime=0) + member * n + gzip.compress(tail, mtime=0)


def bomb_zeros(total: int = 10 * GiB) -> bytes:
    return _repeat_member(b"", b"\0" * 4096, total, b"")


def bomb_binbytes8(total: int = 10 * GiB) -> bytes:
    return _repeat_member(P4 + b"\x8e" + struct.pack("<Q", total), b"\0" * 4096, total, b".")


def bomb_none_list(total: int = 10 * GiB) -> bytes:
    return _repeat_member(P4 + b"](", b"N" * 4096, total, b"e.")


def bomb_trace_entries(total: int = 10 * GiB) -> bytes:
    """~10^8+ trace entries: {"action": "alloc"} appended one by one (7 bytes each)."""
    # root dict; memo 0 'action', memo 1 'alloc' (pushed, stored, popped); root['device_traces'] = [trace]
    head = P4 + b"}" + b"\x8c\x06actionq\x00" + b"\x8c\x05allocq\x01" + b"00" + b"\x8c\x0ddevice_traces]]"
    unit = b"}h\x00h\x01sa" * 585  # 4095 bytes
    return _repeat_member(head, unit, total, b"as.")


BOMBS: dict[str, Callable[[], bytes]] = {
    "bomb_zeros.pickle.gz": bomb_zeros,
    "bomb_binbytes8.pickle.gz": bomb_binbytes8,
    "bomb_none_list.pickle.gz": bomb_none_list,
    "bomb_trace_entries.pickle.gz": bomb_trace_entries,
}


def write_small(folder: Path = HOSTILE_DIR) -> list[Path]:
    """Write the small hostile files (gzip-compressed when over 64 KiB)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, build in [(n, b) for n, (b, _) in SMALL.items()] + list(GOOD.items()):
        data = build()
        if len(data) > 64 << 10 and not name.endswith(".gz"):
            name, data = name + ".gz", gzip.compress(data, compresslevel=9, mtime=0)
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out


if __name__ == "__main__":
    for p in write_small(Path(sys.argv[1]) if len(sys.argv) > 1 else HOSTILE_DIR):
        print(p, p.stat().st_size)
