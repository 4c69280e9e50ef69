"""The admin API for stored keys (``/admin/keys``): who may call it, the create / list / get /
patch / revoke round trip, what a created key can then do, bad input, and what is stored.

One server on its own SQLite database serves the whole module.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import API_KEY, Server, StartServer, assert_error_envelope

KEYS = "/admin/keys"
PUBLIC_FIELDS = {
    "object",
    "id",
    "name",
    "redacted_value",
    "created_at",
    "expires_at",
    "revoked",
    "revoked_at",
    "models",
    "budget_usd",
    "spent_usd",
    "reserved_usd",
    "remaining_usd",
    "limits",
}


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-db") / "voxgate.db"


@pytest.fixture(scope="module")
def keyed(start_server: StartServer, db_path: Path) -> Iterator[Server]:
    with start_server(VOXGATE_DATABASE_URL=f"sqlite:///{db_path}") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(keyed: Server) -> Iterator[httpx.Client]:
    with keyed.admin(timeout=60) as client:
        yield client


def create(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post(KEYS, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for_spend(admin: httpx.Client, key_id: str) -> float:
    """The key's spend once settled (the ledger row is written just after the last byte)."""
    deadline = time.monotonic() + 120  # a guard against a hang, not a speed claim
    while True:
        key = admin.get(f"{KEYS}/{key_id}").json()
        if key["spent_usd"] > 0 or time.monotonic() > deadline:
            assert key["remaining_usd"] == pytest.approx(key["budget_usd"] - key["spent_usd"])
            return float(key["spent_usd"])
        time.sleep(0.1)


# --- who may call it ------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", KEYS),
    ("POST", KEYS),
    ("GET", f"{KEYS}/key_x"),
    ("PATCH", f"{KEYS}/key_x"),
    ("DELETE", f"{KEYS}/key_x"),
    ("POST", f"{KEYS}/key_x/revoke"),
]


def test_admin_refuses_other_callers(keyed: Server, admin: httpx.Client) -> None:
    """No key, a bootstrap API key, a stored API key, a wrong key: all 401, before any body."""
    stored = create(admin, name="not an admin")["key"]
    for authorization in (None, f"Bearer {API_KEY}", f"Bearer {stored}", "Bearer sk-vg-nope"):
        headers = {"Authorization": authorization} if authorization else {}
        for method, path in ADMIN_CALLS:
            response = httpx.request(
                method, keyed.base_url + path, headers=headers, json={"name": "x"}, timeout=30
            )
            error = assert_error_envelope(response, 401, None)
            assert error["code"] == "invalid_api_key", (method, path, error)
    names = [key["name"] for key in admin.get(KEYS).json()["data"]]
    assert names.count("x") == 0  # none of the refused POSTs created anything


# --- the round trip -------------------------------------------------------------------------


def test_create_list_get_patch_revoke(keyed: Server, admin: httpx.Client) -> None:
    created = create(
        admin,
        name="  round trip  ",
        budget_usd=2.5,
        rpm=100,
        audio_seconds_per_minute=600,
        characters_per_minute=5000,
        max_concurrency=3,
        models=["tts-1", "whisper-1", "tts-1"],
        expires_at="2099-06-01T12:00:00+02:00",
    )
    secret = created.pop("key")
    assert secret.startswith("sk-vg-") and len(secret) > 40
    assert set(created) == PUBLIC_FIELDS
    assert created["id"].startswith("key_")
    assert created["name"] == "round trip"
    assert created["redacted_value"] == f"sk-vg-...{secret[-4:]}"
    assert created["expires_at"] == 4_083_991_200  # 2099-06-01T10:00:00Z
    assert created["models"] == ["tts-1", "whisper-1"]
    assert (created["budget_usd"], created["spent_usd"], created["remaining_usd"]) == (2.5, 0, 2.5)
    assert created["limits"] == {
        "rpm": 100,
        "audio_seconds_per_minute": 600,
        "characters_per_minute": 5000,
        "max_concurrency": 3,
    }
    assert (created["revoked"], created["revoked_at"]) == (False, None)
    key_id = created["id"]

    fetched = admin.get(f"{KEYS}/{key_id}")
    assert fetched.status_code == 200 and fetched.json() == created
    listing = admin.get(KEYS)
    assert listing.status_code == 200 and listing.json()["object"] == "list"
    assert created in listing.json()["data"]
    for response in (fetched, listing):
        assert secret not in response.text and secret[6:] not in response.text

    # The key works, and spends against its budget ($15 per 1M characters: 45 micro-USD here).
    audio = keyed.sdk_for(secret).audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    assert len(audio.content) > 1000
    assert wait_for_spend(admin, key_id) == pytest.approx(0.000045)

    patched = admin.patch(
        f"{KEYS}/{key_id}",
        json={"name": "renamed", "budget_usd": 10, "rpm": None, "models": None, "expires_at": None},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["budget_usd"], body["models"], body["expires_at"]) == (
        "renamed",
        10.0,
        None,
        None,
    )
    assert body["limits"] == {**created["limits"], "rpm": None}  # untouched fields stay
    unchanged = admin.patch(f"{KEYS}/{key_id}", json={})
    assert unchanged.status_code == 200 and unchanged.json() == body

    revoked = admin.delete(f"{KEYS}/{key_id}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True and revoked.json()["revoked_at"] >= body["created_at"]
    again = admin.post(f"{KEYS}/{key_id}/revoke")  # the alias; idempotent
    assert again.status_code == 200 and again.json() == revoked.json()
    assert admin.get(f"{KEYS}/{key_id}").json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError) as caught:
        keyed.sdk_for(secret).audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    assert caught.value.code == "invalid_api_key" and "revoked" in caught.value.message

    everyone = [key["id"] for key in admin.get(KEYS).json()["data"]]
    active = admin.get(KEYS, params={"include_revoked": "false"}).json()["data"]
    assert key_id in everyone and key_id not in [key["id"] for key in active]
    assert all(key["revoked"] is False for key in active)
    created_at = [key["created_at"] for key in admin.get(KEYS).json()["data"]]
    assert created_at == sorted(created_at)  # creation order


def test_revoke_alias_and_missing_keys(keyed: Server, admin: httpx.Client) -> None:
    created = create(admin, name="revoked by alias")
    response = admin.post(f"{KEYS}/{created['id']}/revoke")
    assert response.status_code == 200 and response.json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        keyed.sdk_for(created["key"]).models.list()
    for method, path in ADMIN_CALLS[2:]:
        response = admin.request(method, path.replace("key_x", "key_missing"), json={})
        assert assert_error_envelope(response, 404, None)["code"] == "not_found", (method, path)


def test_expired_key_is_refused(keyed: Server, admin: httpx.Client) -> None:
    """A key works until its expires_at, then gets 401. "Works until then" is only checked on
    a call that ended before expires_at; a machine too slow for that gets a longer-lived key."""
    for lifetime_s in (2, 8, 32, 128):
        expires_at = int(time.time()) + lifetime_s
        created = create(admin, name="short-lived", expires_at=expires_at)
        assert created["expires_at"] == expires_at
        client = keyed.sdk_for(created["key"])
        try:
            works = bool(client.models.list().data)
        except openai.AuthenticationError:
            works = False
        if time.time() < expires_at:  # the server checked before expiry: it must have worked
            assert works
            break
    else:
        pytest.fail("no call ended within a key's lifetime, even 128 s")
    time.sleep(max(0.0, expires_at - time.time()) + 0.5)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key" and "expired" in caught.value.message


# --- bad input ------------------------------------------------------------------------------

BAD_CREATES = [
    pytest.param({}, "name", "missing_required_parameter", id="no-name"),
    pytest.param({"name": "   "}, "name", "invalid_value", id="blank-name"),
    pytest.param({"name": "x" * 201}, "name", "invalid_value", id="long-name"),
    pytest.param({"name": 5}, "name", "invalid_value", id="name-not-string"),
    pytest.param({"name": "a", "budget_usd": -1}, "budget_usd", "invalid_value", id="budget<0"),
    pytest.param({"name": "a", "budget_usd": "5"}, "budget_usd", "invalid_value", id="budget-str"),
    pytest.param({"name": "a", "rpm": 0}, "rpm", "invalid_value", id="rpm=0"),
    pytest.param({"name": "a", "rpm": True}, "rpm", "invalid_value", id="rpm-bool"),
    pytest.param({"name": "a", "rpm": 2**40}, "rpm", "invalid_value", id="rpm-huge"),
    pytest.param(
        {"name": "a", "max_concurrency": 1.5}, "max_concurrency", "invalid_value", id="conc-float"
    ),
    pytest.param(
        {"name": "a", "audio_seconds_per_minute": -5},
        "audio_seconds_per_minute",
        "invalid_value",
        id="audio-negative",
    ),
    pytest.param({"name": "a", "models": ["nope"]}, "models", "invalid_value", id="unknown-model"),
    pytest.param({"name": "a", "models": []}, "models", "invalid_value", id="empty-models"),
    pytest.param({"name": "a", "models": "tts-1"}, "models", "invalid_value", id="models-str"),
    pytest.param(
        {"name": "a", "expires_at": "2001-01-01T00:00:00Z"},
        "expires_at",
        "invalid_value",
        id="expired",
    ),
    pytest.param({"name": "a", "expires_at": 1000}, "expires_at", "invalid_value", id="unix-past"),
    pytest.param(
        {"name": "a", "expires_at": "next tuesday"}, "expires_at", "invalid_value", id="not-iso"
    ),
    pytest.param({"name": "a", "colour": "red"}, "colour", "unknown_parameter", id="unknown"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_CREATES)
def test_bad_create(admin: httpx.Client, body: dict[str, Any], param: str, code: str) -> None:
    before = len(admin.get(KEYS).json()["data"])
    error = assert_error_envelope(admin.post(KEYS, json=body), 400, param)
    assert error["code"] == code, error
    assert error["type"] == "invalid_request_error"
    assert len(admin.get(KEYS).json()["data"]) == before


def test_bad_patch(admin: httpx.Client) -> None:
    created = create(admin, name="patch me", rpm=5)
    path = f"{KEYS}/{created['id']}"
    for body, param in [
        ({"name": None}, "name"),
        ({"rpm": -3}, "rpm"),
        ({"models": ["tts-1", "nope"]}, "models"),
        ({"expires_at": "1999-12-31"}, "expires_at"),
        ({"bogus": 1}, "bogus"),
    ]:
        assert_error_envelope(admin.patch(path, json=body), 400, param)
    assert admin.get(path).json() == {key: created[key] for key in PUBLIC_FIELDS}


def test_malformed_body(admin: httpx.Client) -> None:
    response = admin.post(KEYS, content=b"{not json", headers={"content-type": "application/json"})
    assert_error_envelope(response, 400, None)


# --- what is stored -------------------------------------------------------------------------


def test_database_holds_no_secret(admin: httpx.Client, db_path: Path) -> None:
    """Only the SHA-256 of the secret is stored; neither the secret nor its random part is."""
    created = create(admin, name="digest only", models=["whisper-1"], budget_usd=1)
    secret = created["key"]
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert rows
    for row in rows:
        for column in row.keys():  # noqa: SIM118 (sqlite3.Row is not a mapping)
            assert secret[6:] not in str(row[column]), column
    (mine,) = [row for row in rows if row["id"] == created["id"]]
    assert mine["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert mine["redacted"] == created["redacted_value"]
