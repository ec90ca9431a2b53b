"""GEdit-Bench judging protocols: the images the judge sees (both upstream rules), edit lookup, comparability."""
from __future__ import annotations

import pytest
from PIL import Image

from harness.gedit.protocol import (NOT_COMPARABLE, PROTOCOLS, ProtocolError, area_fit_size, check_dataset_columns,
                                    comparability_headline, comparability_problems, get_protocol, judge_images)
from harness.gedit.run_folder import find_edit_image


@pytest.mark.parametrize("size, expected", [
    ((512, 512), (512, 512)),
    ((1024, 768), (591, 443)),      # 4:3; any 4:3 size lands on the same judge size
    ((640, 480), (591, 443)),
    ((768, 1024), (443, 591)),
    ((1920, 1080), (682, 384)),     # 682.67 truncated, not rounded to 683
    ((1080, 1920), (384, 682)),
    ((3, 2), (627, 418)),
    ((500, 333), (627, 417)),       # height 417.84 truncated
    ((7, 5), (605, 432)),           # 605.81 x 432.72: both truncated
    ((1000, 1), (16190, 16)),
])
def test_own_area_size_truncates_like_upstream(size, expected):
    assert area_fit_size(*size) == expected


def _picture(size, mode="RGB", color=(200, 30, 60)):
    img = Image.new("RGB", size, color)
    img.paste((10, 200, 90), (0, 0, size[0] // 2, size[1] // 3))  # some structure, so resampling shows
    return img.convert(mode)


def test_v1_judges_the_raw_source_and_sizes_each_image_on_its_own():
    raw, small = _picture((1024, 768)), _picture((512, 512))
    edit = _picture((1280, 720), mode="RGBA")
    source_seen, edit_seen = judge_images(get_protocol("gedit-v1"), {"input_image": small, "input_image_raw": raw},
                                          edit)
    assert source_seen.size == (591, 443) and edit_seen.size == (682, 384)
    assert source_seen.mode == edit_seen.mode == "RGB"
    # PIL's default resampling after convert("RGB") (bicubic for RGB images in the Pillow this runs on)
    assert source_seen.tobytes() == raw.resize((591, 443), Image.Resampling.BICUBIC).tobytes()
    assert edit_seen.tobytes() == edit.convert("RGB").resize((682, 384), Image.Resampling.BICUBIC).tobytes()


def test_v0_judges_the_stored_source_and_resizes_the_edit_to_it():
    stored, raw = _picture((500, 333), mode="L"), _picture((1500, 999))
    edit = _picture((1024, 1024))
    source_seen, edit_seen = judge_images(get_protocol("gedit-v0"), {"input_image": stored, "input_image_raw": raw},
                                          edit)
    assert source_seen is stored and source_seen.mode == "L"  # untouched, as upstream reopened its PNG copy
    assert edit_seen.size == (500, 333) and edit_seen.mode == "RGB"
    assert edit_seen.tobytes() == edit.resize((500, 333), Image.Resampling.BICUBIC).tobytes()


def test_v1_needs_input_image_raw():
    with pytest.raises(ProtocolError, match="input_image_raw.*gedit-v0"):
        judge_images(get_protocol("gedit-v1"), {"input_image": _picture((8, 8))}, _picture((8, 8)))
    with pytest.raises(ProtocolError, match="gedit-v0"):
        check_dataset_columns(get_protocol("gedit-v1"), ["key", "input_image"])
    check_dataset_columns(get_protocol("gedit-v0"), ["key", "input_image"])


def test_protocol_names():
    assert set(PROTOCOLS) == {"gedit-v0", "gedit-v1"}
    assert get_protocol("gedit-v1").max_new_tokens == 512 and get_protocol("gedit-v1").max_retries == 0
    with pytest.raises(ProtocolError, match="Did you mean gedit-v1"):
        get_protocol("gedit_v1")


def test_edit_lookup_follows_the_official_layout(tmp_path):
    folder = tmp_path / "model" / "fullset" / "color_alter" / "en"
    folder.mkdir(parents=True)
    assert find_edit_image(folder, "abc") is None
    (folder / "abc_SRCIMG.png").write_bytes(b"x")  # upstream's saved source image is not an edit
    (folder / "abcd.png").write_bytes(b"x")
    assert find_edit_image(folder, "abc") is None
    (folder / "abc.webp").write_bytes(b"x")
    (folder / "abc.jpg").write_bytes(b"x")
    assert find_edit_image(folder, "abc") == folder / "abc.jpg"
    (folder / "abc.png").write_bytes(b"x")
    assert find_edit_image(folder, "abc") == folder / "abc.png"


def test_only_the_official_setup_is_comparable():
    assert comparability_problems("gedit-v1", "viescore", 512, 0) == []
    assert comparability_problems("gedit-v0", "viescore", 512, 0) == []
    assert comparability_headline([]) == ""
    problems = comparability_problems("gedit-v1", "project-rubric-v1", 24, 2, synthetic="tiny")
    assert len(problems) == 4 and any("project-rubric-v1" in p for p in problems)
    assert comparability_headline(problems).startswith(NOT_COMPARABLE)
