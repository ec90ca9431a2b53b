"""Finding the official VIEScore templates: upstream's real string names, hash checks, the environment variable,
the cache and the pinned download (served here from 127.0.0.1 with a stand-in text of the same structure)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from harness.gedit import viescore as gv
from harness.gedit.judge_prompts import PromptSetError, resolve_prompt_set

# Same variable names and shape as upstream's vie_prompts.py, our own words. The file is never executed: the
# `raise` line would stop an import.
STAND_IN = '''# stand-in for tests
_context_no_delimit = """You rate pictures.
Answer as JSON:
{
"score" : [...],
"reasoning" : "..."
}"""

_context = """a variant with ||V^=^V|| delimiters, not used by GEdit-Bench"""

_prompts_0shot_two_image_edit_rule = """RULES:

Two pictures: the original, then the edited one.
"""

_prompts_0shot_tie_rule_SC = """
Rate from 0 to 10 how well the edit follows: <instruction>
"""

_prompts_0shot_rule_PQ = """RULES:

One picture. Rate its naturalness and artifacts from 0 to 10.
"""

_prompts_0shot_t2i_rule_SC = """not part of the editing templates"""
VERSION = 3
raise SystemExit("this file must be read, never run")
'''
CTX = 'You rate pictures.\nAnswer as JSON:\n{\n"score" : [...],\n"reasoning" : "..."\n}'
RULE = "RULES:\n\nTwo pictures: the original, then the edited one.\n"
TIE = "\nRate from 0 to 10 how well the edit follows: <instruction>\n"
PQ = "RULES:\n\nOne picture. Rate its naturalness and artifacts from 0 to 10.\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


STAND_IN_SHA256 = {"sc": _sha("\n".join([CTX, RULE, TIE])), "pq": _sha("\n".join([CTX, PQ]))}
SOURCE = gv.PinnedSource("example/repo", "0123456789abcdef0123456789abcdef01234567", "viescore/vie_prompts.py")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No real user cache, no environment override, downloads allowed."""
    monkeypatch.setenv(gv.ENV_CACHE, str(tmp_path / "user-cache"))
    for name in (gv.ENV_FILE, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving good/vie_prompts.py (the stand-in) and bad/vie_prompts.py (one word
    changed); yields its base URL."""
    root = tmp_path / "served"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "good" / "vie_prompts.py").write_text(STAND_IN, encoding="utf-8")
    (root / "bad" / "vie_prompts.py").write_text(STAND_IN.replace("naturalness", "beauty"), encoding="utf-8")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_upstream_names_are_read_without_running_the_file(tmp_path):
    path = tmp_path / "vie_prompts.py"
    path.write_text(STAND_IN, encoding="utf-8")
    found = gv.load_file(path, expected=STAND_IN_SHA256)
    assert found.sc == "\n".join([CTX, RULE, TIE]) and found.pq == "\n".join([CTX, PQ])
    assert found.origin == str(path)
    strings = gv.top_level_strings(STAND_IN)
    assert set(gv.SC_PARTS + gv.PQ_PARTS) <= set(strings) and "VERSION" not in strings


def test_text_that_differs_from_the_published_hash_is_refused(tmp_path):
    path = tmp_path / "vie_prompts.py"
    path.write_text(STAND_IN, encoding="utf-8")
    with pytest.raises(gv.ViescoreError, match="SHA-256"):
        gv.load_file(path)  # the published hashes: a stand-in never matches them
    path.write_text('_context_no_delimit = "a"\n', encoding="utf-8")
    with pytest.raises(gv.ViescoreError, match="_prompts_0shot_rule_PQ"):
        gv.load_file(path, expected=STAND_IN_SHA256)
    with pytest.raises(gv.ViescoreError, match="does not exist"):
        gv.load_file(tmp_path / "missing.py")
    path.write_text("def broken(:\n", encoding="utf-8")
    with pytest.raises(gv.ViescoreError, match="not readable Python"):
        gv.load_file(path, expected=STAND_IN_SHA256)


def test_flag_beats_environment_variable(tmp_path, monkeypatch):
    good, other = tmp_path / "good.py", tmp_path / "other.py"
    good.write_text(STAND_IN, encoding="utf-8")
    other.write_text(STAND_IN.replace("pictures", "images"), encoding="utf-8")
    monkeypatch.setenv(gv.ENV_FILE, str(good))
    assert gv.resolve_official_templates(expected=STAND_IN_SHA256, sources=[SOURCE]).origin == str(good)
    with pytest.raises(gv.ViescoreError, match="SHA-256"):
        gv.resolve_official_templates(other, expected=STAND_IN_SHA256, sources=[SOURCE])


def test_download_wrong_hash_is_refused_and_nothing_is_cached(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(gv.ViescoreError, match="SHA-256") as err:
        gv.resolve_official_templates(sources=[SOURCE], urls=[f"{server}/bad/vie_prompts.py"], cache=cache,
                                      expected=STAND_IN_SHA256)
    assert "--viescore-file" in str(err.value) and "--prompt-set project-rubric" in str(err.value)
    assert not gv.cached_path(SOURCE, cache).exists()


def test_download_right_hash_is_cached_then_used_offline(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    urls = [f"{server}/missing/vie_prompts.py", f"{server}/good/vie_prompts.py"]  # a 404 first, then the file
    second = gv.PinnedSource("example/mirror", "f" * 40, "vie_prompts.py")
    found = gv.resolve_official_templates(sources=[SOURCE, second], urls=urls, cache=cache, expected=STAND_IN_SHA256)
    assert found.origin == urls[1] and found.pq == "\n".join([CTX, PQ])
    cached = gv.cached_path(second, cache)
    assert cached.read_text(encoding="utf-8") == STAND_IN and cached.parent.name == "f" * 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network from here on: the cache answers
    again = gv.resolve_official_templates(sources=[SOURCE, second], urls=urls, cache=cache, expected=STAND_IN_SHA256)
    assert again.origin == str(cached) and again.sc == found.sc


def test_damaged_cache_entry_is_fetched_again(server, tmp_path):
    cache = tmp_path / "cache"
    damaged = gv.cached_path(SOURCE, cache)
    damaged.parent.mkdir(parents=True)
    damaged.write_text(STAND_IN.replace("pictures", "photos"), encoding="utf-8")
    found = gv.resolve_official_templates(sources=[SOURCE], urls=[f"{server}/good/vie_prompts.py"], cache=cache,
                                          expected=STAND_IN_SHA256)
    assert found.origin.startswith("http://127.0.0.1") and damaged.read_text(encoding="utf-8") == STAND_IN


def test_offline_without_the_file_names_both_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PromptSetError) as err:
        resolve_prompt_set("viescore")
    message = str(err.value)
    assert "--viescore-file" in message and "--prompt-set project-rubric" in message and "HF_HUB_OFFLINE" in message


def test_score_only_stage_gets_the_official_identity_without_text(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ident = resolve_prompt_set("viescore", need_text=False)
    assert ident.name == "viescore" and not ident.has_text
    assert ident.sha256 == {**gv.OFFICIAL_SHA256, "set": gv.OFFICIAL_SET_SHA256}
    with pytest.raises(PromptSetError, match="--viescore-file"):
        ident.sc_prompt("anything")


def test_pinned_urls_name_a_commit():
    for source in gv.PINNED_SOURCES:
        assert len(source.commit) == 40 and source.url.startswith("https://raw.githubusercontent.com/")
        assert source.url.endswith("vie_prompts.py") and source.commit in source.url
    assert Path(gv.cached_path(gv.PINNED_SOURCES[0])).parts[-3:-1] == ("viescore", gv.PINNED_SOURCES[0].commit)
