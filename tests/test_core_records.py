"""harness.core: the one atomic writer, rank-aware record sinks, shards and the merge of per-rank files."""
from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from harness.core.distributed import Shard, merge_rank_files
from harness.core.records import RANK_DIR, RecordSink, atomic_output, rank_path, read_jsonl, write_json_atomic


def test_atomic_output_renames_complete_files_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "edit.png"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".edit.png.") and not target.exists()
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp, format="PNG")
    assert Image.open(target).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert Image.open(target).getpixel((0, 0)) == (255, 0, 0)  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["edit.png"]
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


def test_record_sink_writes_the_shared_file_alone_and_a_rank_twin_in_a_group(tmp_path):
    shared = tmp_path / "arm" / "generation.jsonl"
    assert RecordSink(shared).path == shared == RecordSink(shared, Shard.single("cpu")).path
    sink = RecordSink(shared, Shard(rank=2, world_size=3))
    assert sink.path == rank_path(shared, 2) == tmp_path / "arm" / RANK_DIR / "generation.rank002.jsonl"
    sink.append({"key": "k0", "note": "é"})
    assert list(read_jsonl(sink.path)) == [{"key": "k0", "note": "é"}] and not shared.exists()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_take_every_item_exactly_once(world_size):
    items = list(range(7))
    taken = [Shard(rank=r, world_size=world_size).take(items) for r in range(world_size)]
    assert sorted(x for part in taken for x in part) == items
    assert taken[0] == items[::world_size]
    assert Shard.single("cpu").gather({"a": 1}) == [{"a": 1}]
    with pytest.raises(ValueError, match="outside"):
        Shard(rank=world_size, world_size=world_size)


def test_merge_uses_the_callers_order_and_skips_records_already_merged(tmp_path):
    shared = tmp_path / "records.jsonl"
    RecordSink(shared).append({"i": 0})
    for rank, values in ((0, [4, 2]), (1, [3, 0, 1])):  # {"i": 0} is in the shared file already
        for i in values:
            RecordSink(shared, Shard(rank=rank, world_size=2)).append({"i": i})
    other = tmp_path / "other.jsonl"
    RecordSink(other, Shard(rank=1, world_size=2)).append({"i": 9})

    added = merge_rank_files(tmp_path, lambda path: (lambda r: r["i"]) if path == shared else (lambda r: 0))

    assert added == {str(shared): 4, str(other): 1}
    assert [r["i"] for r in read_jsonl(shared)] == [0, 1, 2, 3, 4]
    assert not (tmp_path / RANK_DIR).exists() and merge_rank_files(tmp_path, lambda p: lambda r: 0) == {}


def test_append_after_a_torn_last_line_cuts_the_fragment_off_and_says_so(tmp_path, caplog):
    path = tmp_path / "judgements.jsonl"
    RecordSink(path).append({"i": 0})
    with open(path, "a", encoding="utf-8") as f:  # a crash mid-append left half a line
        f.write('{"i": 1, "sc": {"sco')
    RecordSink(path).append({"i": 2})
    assert [r["i"] for r in read_jsonl(path)] == [0, 2]
    assert path.read_text().splitlines()[-1] == '{"i": 2}'
    assert "torn last line" in caplog.text and str(path) in caplog.text
    caplog.clear()
    RecordSink(path).append({"i": 3})  # an intact file is left alone
    assert [r["i"] for r in read_jsonl(path)] == [0, 2, 3] and "torn" not in caplog.text
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"i": ')  # the fragment is the whole file
    RecordSink(lone).append({"i": 9})
    assert lone.read_text() == '{"i": 9}\n'


def test_atomic_outputs_get_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_output(tmp_path / "b.png") as tmp:
            Image.new("RGB", (2, 2)).save(tmp, format="PNG")
    finally:
        os.umask(old)
    for name in ("a.json", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
