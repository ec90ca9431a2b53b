"""The GEdit judge behind an OpenAI-compatible chat-completions server: vLLM, SGLang, or a hosted model.

`ServedJudge` presents the same `harness.gedit.judge.Judge` interface as the in-process `QwenJudge`: one user turn with
the images (base64 PNG data URLs) before the prompt, temperature 0 and the protocol's max tokens; an answer that
does not parse is asked again with the protocol's seeded sampling (temperature RETRY_TEMPERATURE, top_p, seed =
base seed + attempt), so scores mean the same thing on both paths.

Transport is the `openai` async client with `concurrency` requests in flight and a per-request timeout. Its own
retry loop is off (max_retries=0): this module retries 429, 5xx, timeouts, connection errors and unreadable bodies
itself, up to `transport_retries` times with capped exponential back-off, because every failed try is written into
the call's record (the client's loop hides them). A request that never succeeds makes its call a judge failure
(status "transport_failure"), never a score. The served model id (`response.model`) and `system_fingerprint` are
recorded per attempt; the id seen at start-up is part of `settings()`, so a resume against another model is a
settings change.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import random
from typing import Sequence

from harness.gedit.judge import (RETRY_TEMPERATURE, RETRY_TOP_P, CallResult, JudgeCall, JudgeError, finish_call,
                           parse_judge_answer)

DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT_S = 120.0
TRANSPORT_RETRIES = 4
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
PROBE_TIMEOUT_S = 20.0
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class ServerRefused(Exception):
    """The server answered with an error that retrying will not fix (400, 401, 404, ...)."""


def png_data_url(image) -> str:
    """A PIL image as `data:image/png;base64,...` (RGB, lossless, so the server sees the protocol's pixels)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def backoff_seconds(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Wait before transport retry `retry` (1, 2, ...): base * 2^(retry-1), capped, with up to 25% jitter so that
    many calls throttled together do not come back together."""
    return min(cap_s, base_s * 2 ** (retry - 1)) * (1.0 + 0.25 * rng.random())


@dataclasses.dataclass(frozen=True)
class JudgeServer:
    """Where a served judge answers: --judge-url, --judge-api-key-env, --judge-concurrency, --judge-timeout."""

    url: str
    api_key_env: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S

    def connect(self, model: str, *, max_new_tokens: int, max_retries: int) -> "ServedJudge":
        """A judge for `model` on this server, after a 1-token request (a wrong URL, key or model name raises
        JudgeError naming the fix)."""
        return ServedJudge(self.url, model, api_key_env=self.api_key_env, concurrency=self.concurrency,
                           timeout_s=self.timeout_s, max_new_tokens=max_new_tokens, max_retries=max_retries)


class ServedJudge:
    """Judge through `{url}/chat/completions` (url like http://127.0.0.1:8000/v1); see the module docstring."""

    def __init__(self, url: str, model: str, *, api_key_env: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_new_tokens: int = 512, max_retries: int = 2, seed: int = 0,
                 transport_retries: int = TRANSPORT_RETRIES, backoff_base_s: float = BACKOFF_BASE_S,
                 backoff_cap_s: float = BACKOFF_CAP_S, probe: bool = True):
        if concurrency < 1:
            raise JudgeError(f"--judge-concurrency {concurrency}: give 1 or more requests in flight")
        self.url, self.model = url.rstrip("/"), model
        self.api_key = _api_key(api_key_env)
        self.api_key_env = api_key_env
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_new_tokens, self.max_retries, self.seed = max_new_tokens, max_retries, seed
        self.transport_retries, self.backoff_base_s, self.backoff_cap_s = transport_retries, backoff_base_s, backoff_cap_s
        self.last_run_stats: dict = {}
        self.served_model: str | None = None
        self.fingerprints: set[str] = set()
        if probe:
            self.served_model, fingerprint = asyncio.run(self._probe())
            if fingerprint:
                self.fingerprints.add(fingerprint)

    @property
    def chunk_samples(self) -> int:
        return 2 * self.concurrency  # 4x concurrency calls per chunk: the tail of one chunk idles few slots

    def settings(self) -> dict:
        return {"kind": "served", "model": self.model, "served_model": self.served_model, "temperature": 0.0,
                "max_tokens": self.max_new_tokens, "max_retries": self.max_retries,
                "retry": {"temperature": RETRY_TEMPERATURE, "top_p": RETRY_TOP_P, "seed": f"{self.seed} + attempt"},
                "images": "png data url"}

    def describe(self) -> dict:
        return {**self.settings(), "url": self.url, "concurrency": self.concurrency, "timeout_s": self.timeout_s,
                "transport_retries": self.transport_retries, "api_key_env": self.api_key_env,
                "system_fingerprints": sorted(self.fingerprints)}

    # ---- inputs
    def prepare(self, calls: Sequence[JudgeCall]) -> list[tuple[str, list[dict]]]:
        """(call_id, chat messages) per call: images as PNG data URLs before the prompt, one user turn."""
        return [(c.call_id, [{"role": "user", "content": [
            *({"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in c.images),
            {"type": "text", "text": c.prompt}]}]) for c in calls]

    # ---- calls
    def judge(self, prepared: Sequence[tuple[str, list[dict]]], progress=None) -> list[CallResult]:
        """One CallResult per call, in order; transport failures are failed calls, never exceptions."""
        self.last_run_stats = {"new_tokens": 0, "requests": 0, "transport_retries": 0, "transport_failures": 0}
        return asyncio.run(self._judge_all(list(prepared), progress))

    def run_calls(self, calls: Sequence[JudgeCall], progress=None) -> list[CallResult]:
        return self.judge(self.prepare(calls), progress)

    async def _judge_all(self, prepared, progress) -> list[CallResult]:
        gate = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            return list(await asyncio.gather(*(self._judge_call(client, gate, call_id, messages, progress)
                                                for call_id, messages in prepared)))

    async def _judge_call(self, client, gate, call_id: str, messages: list[dict], progress) -> CallResult:
        attempts: list[dict] = []
        for attempt in range(self.max_retries + 1):
            seed = None if attempt == 0 else self.seed + attempt
            async with gate:
                record = await self._ask(client, messages, seed, random.Random(f"{call_id}:{attempt}"))
            record = {"attempt": attempt, "sample_seed": seed, **record}
            attempts.append(record)
            if record["answer"] is None:  # the server never answered: asking again with sampling would not help
                self.last_run_stats["transport_failures"] += 1
                break
            record["parse"] = parse_judge_answer(record["answer"]).to_record()
            if record["parse"]["scores"] is not None and not record["parse"]["out_of_range"]:
                break
        if progress is not None:
            progress.update(1)
        if attempts[-1]["answer"] is None:
            return CallResult(call_id, "transport_failure", None, None, attempts)
        return finish_call(call_id, attempts)

    async def _ask(self, client, messages, seed: int | None, rng: random.Random) -> dict:
        """One answer with transport retries: {answer, served_model, system_fingerprint, new_tokens, errors}; answer
        None when every try failed."""
        import openai

        sampling = ({"temperature": 0.0} if seed is None else
                    {"temperature": RETRY_TEMPERATURE, "top_p": RETRY_TOP_P, "seed": seed})
        errors = []
        for retry in range(self.transport_retries + 1):
            if retry:
                self.last_run_stats["transport_retries"] += 1
                await asyncio.sleep(backoff_seconds(retry, self.backoff_base_s, self.backoff_cap_s, rng))
            self.last_run_stats["requests"] += 1
            try:
                response = await client.chat.completions.create(model=self.model, messages=messages,
                                                                max_tokens=self.max_new_tokens, **sampling)
                answer = response.choices[0].message.content
            except openai.APIStatusError as err:
                errors.append(f"HTTP {err.status_code}: {_short(err.message)}")
                if err.status_code not in RETRYABLE_STATUS:
                    break
                continue
            except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError, IndexError,
                    AttributeError) as err:  # timeouts are connection errors; the rest: an unreadable body
                errors.append(f"{type(err).__name__}: {_short(str(err))}")
                continue
            if answer is None:
                errors.append("no message content in the response")
                continue
            if response.system_fingerprint:
                self.fingerprints.add(response.system_fingerprint)
            usage = getattr(response, "usage", None)
            self.last_run_stats["new_tokens"] += getattr(usage, "completion_tokens", 0) or 0
            return {"answer": answer, "served_model": response.model, "system_fingerprint": response.system_fingerprint,
                    "finish_reason": response.choices[0].finish_reason, "transport_errors": errors}
        return {"answer": None, "served_model": None, "system_fingerprint": None, "finish_reason": None,
                "transport_errors": errors}

    async def _probe(self) -> tuple[str, str | None]:
        """(served model id, fingerprint) from one 1-token request: a wrong URL, key or model name stops the run here,
        before any real work, with the fix in the message."""
        import openai

        async with self._client(timeout_s=PROBE_TIMEOUT_S) as client:
            try:
                response = await client.chat.completions.create(
                    model=self.model, max_tokens=1, temperature=0.0,
                    messages=[{"role": "user", "content": [{"type": "text", "text": "Reply with OK."}]}])
                return response.model, response.system_fingerprint
            except openai.NotFoundError as err:
                raise JudgeError(f"the judge server at {self.url} does not serve model {self.model!r} "
                                 f"({_short(err.message)}); pass --judge-model with a name it serves "
                                 f"(GET {self.url}/models lists them)") from err
            except openai.AuthenticationError as err:
                raise JudgeError(f"the judge server at {self.url} refused the API key (HTTP 401); set the "
                                 f"variable named by --judge-api-key-env") from err
            except (openai.APIError, ValueError, IndexError, AttributeError) as err:
                raise JudgeError(f"the judge server at {self.url} did not answer a test request "
                                 f"({type(err).__name__}: {_short(str(err))}); check --judge-url (it ends in /v1) "
                                 "and that the server is up") from err

    def _client(self, timeout_s: float | None = None):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.url, api_key=self.api_key, timeout=timeout_s or self.timeout_s,
                           max_retries=0)


def _api_key(env_name: str | None) -> str:
    if env_name is None:
        return "none"  # local servers (vLLM, SGLang) accept any key unless started with one
    key = os.environ.get(env_name)
    if not key:
        raise JudgeError(f"--judge-api-key-env {env_name}: that environment variable is not set; export it with "
                         "the server's API key")
    return key


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
