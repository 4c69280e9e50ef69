"""The shared server starts and answers every route family."""

from conftest import Server


def test_health_and_request_id(server: Server) -> None:
    import httpx

    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers["x-request-id"].startswith("req_")
