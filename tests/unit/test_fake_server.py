"""The fake Cupix server, exercised over real HTTP like a client of the real service would."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from cupixfs.fake import FakeServer, generate, profile

TOKEN = "fake-token"
MAIN, SINGLE, EMPTY, HOSTILE = 1000, 1001, 1002, 1003
BIG_VIDEO = 5016  # 3_000_017 bytes
ZERO_VIDEO, ONE_VIDEO = 5029, 5028


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(profile("test"), tmp_path_factory.mktemp("fake-data"))


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[FakeServer]:
    with FakeServer(data_dir, token=TOKEN, per_page=5) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean_server(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with no faults, zeroed stats and the default token."""
    if "server" not in request.fixturenames:
        yield
        return
    srv: FakeServer = request.getfixturevalue("server")
    srv.faults.reset()
    srv.api.reset()
    srv.stats.reset()
    srv.set_tokens([TOKEN])
    yield
    srv.faults.reset()
    srv.api.reset()


@pytest.fixture
def client(server: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"X-CUPIX-AUTH": TOKEN}, timeout=10) as c:
        yield c


def api(client: httpx.Client, server: FakeServer, path: str, **params: Any) -> httpx.Response:
    return client.get(server.api_url + path, params=params)


def signed_url(client: httpx.Client, server: FakeServer, path: str) -> str:
    r = api(client, server, path)
    assert r.status_code == 302, r.text
    return r.headers["Location"]


def blob_file(server: FakeServer, blob_id: str) -> bytes:
    return (server.dataset.dir / "blobs" / blob_id).read_bytes()


def list_all(client: httpx.Client, server: FakeServer, path: str, **params: Any) -> list[dict]:
    """Follow next_page like a client must, checking every pagination block on the way."""
    items: list[dict] = []
    page = 1
    while True:
        body = api(client, server, path, page=page, **params).json()
        pag = body["result"]["pagination"]
        assert pag["current_page"] == page
        assert pag["previous_page"] == (page - 1 if page > 1 else None)
        items += body["result"]["data"]
        if pag["next_page"] is None:
            assert page >= pag["total_pages"]
            assert len(items) == pag["total_entries"]
            return items
        assert pag["next_page"] == page + 1
        page += 1


# --- captures, projects, levels, the user ------------------------------------------------------


def test_captures_list_every_capture_with_bare_ids(
    server: FakeServer, client: httpx.Client
) -> None:
    fields = "id,name,facility,level,record,captured_at,created_at,updated_at"
    items = list_all(client, server, "/captures", fields=fields)
    assert [int(i["id"]) for i in items] == sorted(server.dataset.captures)
    assert len(items) > 3 * 5
    for item in items:
        attrs = item["attributes"]
        assert item["type"] == "capture" and attrs["name"] and attrs["captured_at"]
        for ref in ("facility", "level", "record"):  # nested objects: an id or nothing
            assert set(attrs[ref]) <= {"id"}
    assert any(i["attributes"]["level"] == {} for i in items)
    assert any(i["attributes"]["facility"] == {} for i in items)
    assert api(client, server, "/captures").status_code == 400  # fields is required
    main = api(client, server, "/captures", fields="id", q="MAIN").json()["result"]["data"]
    assert [int(i["id"]) for i in main] == [MAIN]


def test_one_capture_and_unknown_ids(server: FakeServer, client: httpx.Client) -> None:
    one = api(client, server, f"/captures/{MAIN}", fields="id,name").json()["result"]["data"]
    assert one["attributes"] == {"id": MAIN, "name": "main"}
    missing = api(client, server, "/captures/999999", fields="id")
    assert missing.status_code == 404 and "not found" in missing.json()["result"]["message"]
    server.api.configure(unknown_ids="empty")
    assert api(client, server, "/captures/999999", fields="id").json()["result"]["data"] is None
    videos = api(client, server, "/videos", fields="id", capture_id=999999)
    assert videos.status_code == 200 and videos.json()["result"]["data"] == []
    records = api(client, server, "/pointclouds", fields="id", record_id=999999)
    assert records.status_code == 200 and records.json()["result"]["data"] == []


def test_facilities_paginate_with_totals_only(server: FakeServer, client: httpx.Client) -> None:
    first = api(client, server, "/facilities", fields="id,key,name").json()["result"]
    assert set(first["pagination"]) == {"total_entries", "total_pages"}
    total = first["pagination"]["total_pages"]
    items = []
    for page in range(1, total + 1):
        items += api(client, server, "/facilities", fields="id,key,name", page=page).json()[
            "result"
        ]["data"]
    assert [i["attributes"]["name"] for i in items] == [
        f["name"] for f in server.dataset.facilities.values()
    ]
    key = items[0]["attributes"]["key"]
    one = api(client, server, f"/facilities/{key}", fields="id,name").json()["result"]["data"]
    assert one["attributes"]["name"] == "Tower A / Phase 2"
    assert api(client, server, "/facilities/nope", fields="id").status_code == 404


def test_levels_of_a_project(server: FakeServer, client: httpx.Client) -> None:
    facility = next(iter(server.dataset.facilities.values()))
    levels = list_all(client, server, "/levels", fields="id,name", facility_key=facility["key"])
    assert [lv["attributes"]["name"] for lv in levels] == ["Level 1", "Level 2", "Basement"]
    bare = [f for f in server.dataset.facilities.values() if not server.dataset.levels_of(f["id"])]
    empty = api(client, server, "/levels", fields="id", facility_key=bare[0]["key"]).json()
    assert empty["result"]["data"] == [] and empty["result"]["pagination"]["total_pages"] == 0
    assert api(client, server, "/levels", fields="id").status_code == 400
    assert api(client, server, "/levels", fields="id", facility_key="nope").status_code == 404


def test_me(server: FakeServer, client: httpx.Client) -> None:
    me = api(client, server, "/me", fields="id").json()["result"]["data"]
    assert me["type"] == "user" and me["attributes"] == {"id": 1}
    assert httpx.get(server.api_url + "/me", params={"fields": "id"}).status_code == 401


def test_routes_can_be_refused(server: FakeServer, client: httpx.Client) -> None:
    admin = server.base_url + "/_fake/api"
    r = httpx.post(admin, json={"refuse": {"GET /facilities": 403, "GET /levels": 404}})
    assert r.status_code == 200 and r.json()["refuse"] == {
        "GET /facilities": 403,
        "GET /levels": 404,
    }
    refused = api(client, server, "/facilities", fields="id")
    assert refused.status_code == 403 and refused.json()["result"]["message"]
    assert api(client, server, "/captures", fields="id").status_code == 200
    assert httpx.post(admin, json={"refuse": {"GET /nowhere": 404}}).status_code == 400
    assert httpx.post(admin, json={"refuse": {"GET /me": 200}}).status_code == 400
    assert httpx.post(admin + "/reset").json() == {"refuse": {}, "unknown_ids": "404"}
    assert api(client, server, "/facilities", fields="id").status_code == 200


def test_sizes_are_stated_right_wrong_or_not_at_all(
    server: FakeServer, client: httpx.Client
) -> None:
    subs = list_all(client, server, "/pointclouds", fields="id,kind,filesize")
    stated = {
        int(i["id"]): i["attributes"].get("filesize", "absent")
        for i in subs
        if i["attributes"]["kind"] == "sub"
    }
    model = server.dataset.pointclouds
    modes = {pc_id: model[pc_id]["stated_size"] for pc_id in stated}
    for pc_id, value in stated.items():
        size = model[pc_id]["files"]["cpc"]["size"]
        expected = {
            "true": size,
            "wrong": size + 4_099,
            "short": max(1, size // 2),
            "missing": "absent",
            "null": None,
        }
        if modes[pc_id] in expected:
            assert value == expected[modes[pc_id]]
        else:
            assert not (isinstance(value, int) and value > 0)
    assert list(modes.values()).count("true") >= len(modes) / 2, "half the sizes are right"
    assert {"wrong", "short", "missing", "null"} <= set(modes.values())
    sub = next(pc_id for pc_id, mode in modes.items() if mode == "true")
    resources = api(client, server, f"/pointclouds/{sub}/resources", fields="id,kind,size")
    by_kind = {
        r["attributes"]["kind"]: r["attributes"]["size"] for r in resources.json()["result"]["data"]
    }
    assert by_kind["mesh"] == model[sub]["files"]["mesh"]["size"]
    assert by_kind[None] == model[sub]["files"]["cpc"]["size"]


def test_a_capture_can_be_moved(tmp_path: Path) -> None:
    data = generate(profile("test"), tmp_path / "data")
    with FakeServer(data, token=TOKEN) as srv, httpx.Client(headers={"X-CUPIX-AUTH": TOKEN}) as c:
        basement = next(lv for lv in srv.dataset.levels.values() if lv["name"] == "Basement")
        moved = httpx.post(
            f"{srv.base_url}/_fake/captures/{MAIN}/move", json={"level_id": basement["id"]}
        )
        assert moved.status_code == 200
        item = api(c, srv, f"/captures/{MAIN}", fields="level,updated_at").json()["result"]["data"]
        assert item["attributes"]["level"] == {"id": basement["id"]}
        unplaced = httpx.post(f"{srv.base_url}/_fake/captures/{MAIN}/move", json={"level_id": None})
        assert unplaced.json()["level_id"] is None
        assert httpx.post(f"{srv.base_url}/_fake/captures/1/move", json={}).status_code == 404


# --- auth and fields ---------------------------------------------------------------------------


def test_auth_is_required(server: FakeServer) -> None:
    url = server.api_url + "/videos"
    params = {"capture_id": MAIN, "fields": "id"}
    assert httpx.get(url, params=params).status_code == 401
    assert httpx.get(url, params=params, headers={"X-CUPIX-AUTH": "wrong"}).status_code == 401
    assert "token" in httpx.get(url, params=params).json()["result"]["message"]
    assert httpx.get(url, params={**params, "x-cupix-auth": TOKEN}).status_code == 200
    assert httpx.get(url, params=params, headers={"x-cupix-auth": TOKEN}).status_code == 200
    redirect = httpx.get(server.api_url + f"/videos/{BIG_VIDEO}/download")
    assert redirect.status_code == 401


def test_tokens_can_be_revoked_and_added(server: FakeServer, client: httpx.Client) -> None:
    admin = server.base_url + "/_fake/tokens"
    assert httpx.post(admin, json={"valid": ["other"]}).json() == {"valid": ["other"]}
    assert api(client, server, "/videos", capture_id=MAIN, fields="id").status_code == 401
    other = httpx.get(
        server.api_url + "/videos",
        params={"capture_id": MAIN, "fields": "id"},
        headers={"X-CUPIX-AUTH": "other"},
    )
    assert other.status_code == 200
    assert httpx.post(admin, json={"valid": "x"}).status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/videos",
        "/pointclouds",
        "/pointclouds/7301",
        "/pointclouds/7301/meta",
        "/pointclouds/7301/resources",
    ],
)
def test_fields_is_required(server: FakeServer, client: httpx.Client, path: str) -> None:
    r = api(client, server, path, capture_id=MAIN)
    assert r.status_code == 400
    assert "fields" in r.json()["result"]["message"]
    assert api(client, server, path, capture_id=MAIN, fields=" , ").status_code == 400


def test_only_requested_fields_are_returned(server: FakeServer, client: httpx.Client) -> None:
    body = api(client, server, "/videos", capture_id=SINGLE, fields="name, state").json()
    item = body["result"]["data"][0]
    assert item["type"] == "video" and item["id"] == str(item["attributes"]["id"])
    assert set(item["attributes"]) == {"id", "name", "state"}
    assert body["session"] is None
    full = api(
        client,
        server,
        "/videos",
        capture_id=SINGLE,
        fields="id,name,state,created_at,updated_at,bogus",
    )
    assert set(full.json()["result"]["data"][0]["attributes"]) == {
        "id",
        "name",
        "state",
        "created_at",
        "updated_at",
    }


# --- videos ----------------------------------------------------------------------------------


def test_video_pagination_is_complete(server: FakeServer, client: httpx.Client) -> None:
    first = api(client, server, "/videos", capture_id=MAIN, fields="id,name").json()
    assert first["result"]["pagination"] == {
        "total_entries": 17,
        "total_pages": 4,
        "per_page": 5,
        "previous_page": None,
        "current_page": 1,
        "next_page": 2,
    }
    items = list_all(client, server, "/videos", capture_id=MAIN, fields="id,name")
    ids = [int(i["id"]) for i in items]
    assert ids == server.dataset.captures[MAIN]["video_ids"]
    last = api(client, server, "/videos", capture_id=MAIN, fields="id", page=4).json()
    assert len(last["result"]["data"]) == 2 and last["result"]["pagination"]["next_page"] is None
    beyond = api(client, server, "/videos", capture_id=MAIN, fields="id", page=9).json()
    assert beyond["result"]["data"] == []
    one_page = api(client, server, "/videos", capture_id=MAIN, fields="id", per_page=20).json()
    assert len(one_page["result"]["data"]) == 17
    capped = api(client, server, "/videos", capture_id=MAIN, fields="id", per_page=10**6).json()
    assert capped["result"]["pagination"]["per_page"] == 100
    assert api(client, server, "/videos", capture_id=MAIN, fields="id", page=0).status_code == 400


def test_video_lists_small_empty_and_unknown(server: FakeServer, client: httpx.Client) -> None:
    single = api(client, server, "/videos", capture_id=SINGLE, fields="id").json()["result"]
    assert len(single["data"]) == 1 and single["pagination"]["next_page"] is None
    empty = api(client, server, "/videos", capture_id=EMPTY, fields="id").json()["result"]
    assert empty["data"] == []
    assert empty["pagination"]["total_pages"] in (0, 1)
    assert empty["pagination"]["next_page"] is None
    assert api(client, server, "/videos", capture_id=999999, fields="id").status_code == 404
    assert api(client, server, "/videos", capture_id="x", fields="id").status_code == 400
    assert api(client, server, "/videos", fields="id").status_code == 400


def test_hostile_names_are_served_verbatim(server: FakeServer, client: httpx.Client) -> None:
    items = list_all(client, server, "/videos", capture_id=HOSTILE, fields="name")
    names = [i["attributes"]["name"] for i in items]
    assert "../../etc/passwd" in names and "" in names and "nul\x00byte.insv" in names
    for item in items:
        r = client.get(signed_url(client, server, f"/videos/{item['id']}/download"))
        assert r.status_code == 200
        expected = server.dataset.videos[int(item["id"])]["file"]["sha256"]
        assert hashlib.sha256(r.content).hexdigest() == expected


def test_video_download_redirects_to_the_same_server(
    server: FakeServer, client: httpx.Client
) -> None:
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == server.base_url
    assert parts.path.startswith("/store/video-5016/")
    assert "X-Amz-Signature=" in parts.query and "X-Amz-Expires=3600" in parts.query
    assert api(client, server, "/videos/424242/download").status_code == 404


# --- pointclouds -----------------------------------------------------------------------------


def pc_ids(client: httpx.Client, server: FakeServer, **params: Any) -> list[int]:
    items = list_all(client, server, "/pointclouds", fields="id,kind", **params)
    assert all(i["type"] == "pointcloud" for i in items)
    return [int(i["id"]) for i in items]


def test_pointcloud_filters(server: FakeServer, client: httpx.Client) -> None:
    model = server.dataset.model["pointclouds"]
    every = [pc["id"] for pc in model]
    assert pc_ids(client, server) == every
    assert pc_ids(client, server, pointcloud_type="all") == every
    assert pc_ids(client, server, capture_id=MAIN) == [
        pc["id"] for pc in model if pc["capture_id"] == MAIN
    ]
    uploaded = [pc["id"] for pc in model if pc["attributes"]["pointcloud_type"] == "uploaded"]
    assert uploaded and pc_ids(client, server, pointcloud_type="uploaded") == uploaded
    record = server.dataset.model["records"][0]["id"]
    assert pc_ids(client, server, record_id=record, pointcloud_type="uploaded") == uploaded
    assert set(uploaded) < set(pc_ids(client, server, record_id=record))
    cluster = server.dataset.model["clusters"][0]
    assert pc_ids(client, server, cluster_id=cluster["id"]) == [
        cluster["group_id"],
        *cluster["sub_ids"],
    ]
    assert pc_ids(client, server, capture_id=MAIN, pointcloud_type="uploaded") == []
    assert pc_ids(client, server, capture_id=SINGLE) == []
    for key in ("capture_id", "cluster_id", "record_id"):
        r = api(client, server, "/pointclouds", fields="id", **{key: 999999})
        assert r.status_code == 404
    assert api(client, server, "/pointclouds", fields="id", pointcloud_type="x").status_code == 400


def test_get_pointcloud_and_meta(server: FakeServer, client: httpx.Client) -> None:
    body = api(client, server, "/pointclouds/7301", fields="id,kind,parent,meta,cluster").json()
    data = body["result"]["data"]
    assert data["id"] == "7301" and data["type"] == "pointcloud"
    assert data["attributes"]["kind"] == "sub"
    assert data["attributes"]["parent"] == {"id": 7300}
    assert data["attributes"]["cluster"]["type"] == "Cluster"
    meta = api(client, server, "/pointclouds/7301/meta", fields="id").json()
    assert meta["session"] is None and meta["message"] is None
    assert meta["result"] == data["attributes"]["meta"]
    assert len(meta["result"]["prop"]["wtm"]) == 16
    assert api(client, server, "/pointclouds/999999", fields="id").status_code == 404


def test_pointcloud_downloads(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, "/pointclouds/7301/download")
    assert client.get(url).content == blob_file(server, "pc-7301-cpc")
    group = api(client, server, "/pointclouds/7300/download")
    assert group.status_code == 400 and "group" in group.json()["result"]["message"]
    assert api(client, server, "/pointclouds/999999/download").status_code == 404


def test_resources(server: FakeServer, client: httpx.Client) -> None:
    body = api(client, server, "/pointclouds/7301/resources", fields="id, name, kind").json()
    assert body["result"]["pagination"] is None
    kinds = [d["attributes"]["kind"] for d in body["result"]["data"]]
    assert kinds == [None, "plane", "mesh", "ply"]
    assert all(d["type"] == "resource" for d in body["result"]["data"])
    mesh = client.get(signed_url(client, server, "/pointclouds/7301/resources/mesh/download"))
    assert mesh.content == blob_file(server, "pc-7301-mesh")
    ply = client.get(signed_url(client, server, "/pointclouds/7301/resources/ply/download"))
    assert ply.content.startswith(b"ply\nformat binary_little_endian 1.0\n")
    # 7302 has a mesh but no ply; 7304 has neither.
    assert api(client, server, "/pointclouds/7302/resources/ply/download").status_code == 404
    assert api(client, server, "/pointclouds/7304/resources/mesh/download").status_code == 404
    bare = api(client, server, "/pointclouds/7304/resources", fields="kind").json()
    assert [d["attributes"]["kind"] for d in bare["result"]["data"]] == [None, "plane"]
    assert api(client, server, "/pointclouds/7301/resources/x/download").status_code == 400
    assert api(client, server, "/pointclouds/7300/resources", fields="id").status_code == 400


# --- blob store ------------------------------------------------------------------------------


def test_ranged_gets_return_exactly_the_blob_bytes(
    server: FakeServer, client: httpx.Client
) -> None:
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    data = blob_file(server, f"video-{BIG_VIDEO}")
    size = len(data)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=1000-1999999": (1000, 1999999),
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=-4096": (size - 4096, size - 1),
        f"bytes=5-{size + 100}": (5, size - 1),
        f"bytes=-{size * 2}": (0, size - 1),
    }
    for header, (start, end) in cases.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert int(r.headers["Content-Length"]) == end - start + 1
        assert r.content == data[start : end + 1], header
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["ETag"].startswith('"') and whole.headers["Last-Modified"]
    assert client.get(url, headers={"Range": "bytes=0-1"}).headers["ETag"] == whole.headers["ETag"]
    # Malformed and multi-range headers are ignored, like S3 does.
    assert client.get(url, headers={"Range": "bytes=0-1,5-6"}).status_code == 200
    stats = server.stats.snapshot()
    assert [f"video-{BIG_VIDEO}", 1000, 1999999] in stats["blob_ranges"]


def test_unsatisfiable_ranges(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    r = client.get(url, headers={"Range": "bytes=3000017-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */3000017"
    assert client.get(url, headers={"Range": "bytes=-0"}).status_code == 416
    zero = signed_url(client, server, f"/videos/{ZERO_VIDEO}/download")
    assert client.get(zero, headers={"Range": "bytes=0-1048575"}).status_code == 416
    plain = client.get(zero)
    assert plain.status_code == 200 and plain.content == b""
    one = signed_url(client, server, f"/videos/{ONE_VIDEO}/download")
    r = client.get(one, headers={"Range": "bytes=0-1048575"})
    assert r.status_code == 206 and r.headers["Content-Range"] == "bytes 0-0/1"


def test_signed_urls_refuse_head_tampering_and_expiry(
    server: FakeServer, client: httpx.Client
) -> None:
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    assert client.head(url).status_code == 403
    bad = client.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert bad.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in bad.content
    other = client.get(url.replace("video-5016", "video-5000"))
    assert other.status_code == 403
    assert client.get(url.split("?")[0]).status_code == 403

    server.faults.update(clock_offset_s=7200)  # the URL above is now two hours old
    old = client.get(url)
    assert old.status_code == 403
    assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in old.content
    server.faults.update(clock_offset_s=0, url_ttl_s=0)
    fresh = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    assert "X-Amz-Expires=0" in fresh
    assert b"Request has expired" in client.get(fresh).content


def test_url_ttl_expires_in_real_time(server: FakeServer, client: httpx.Client) -> None:
    server.faults.update(url_ttl_s=1)
    url = signed_url(client, server, f"/videos/{ONE_VIDEO}/download")
    time.sleep(2.05)
    assert client.get(url).status_code == 403


def test_conditional_requests(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{ONE_VIDEO}/download")
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-Match": etag}).status_code == 200
    assert client.get(url, headers={"If-Match": '"nope"'}).status_code == 412
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_plain_routes(server: FakeServer, client: httpx.Client) -> None:
    index = client.get(server.plain_url)
    assert index.status_code == 200 and index.headers["Content-Type"].startswith("text/html")
    names = server.dataset.plain_names
    assert len(names) == len(server.dataset.blobs)
    name = next(n for n, b in names.items() if b == f"video-{BIG_VIDEO}")
    assert f'<a href="{name}">{name}</a>' in index.text
    head = client.head(server.plain_url + name)
    assert head.status_code == 200 and head.headers["Content-Length"] == "3000017"
    part = client.get(server.plain_url + name, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == blob_file(server, f"video-{BIG_VIDEO}")[10:20]
    assert client.head(server.plain_url).status_code == 200
    assert client.get(server.plain_url + "missing").status_code == 404
    assert server.stats.snapshot()["plain_bytes"] == 10


def test_client_disconnect_mid_body_does_not_hurt_the_server(
    server: FakeServer, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url = urlsplit(signed_url(client, server, f"/videos/{BIG_VIDEO}/download"))
    for _ in range(3):
        with socket.create_connection((url.hostname, url.port)) as s:
            s.sendall(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
    with caplog.at_level(logging.ERROR, logger="cupixfs.fake"):
        time.sleep(0.2)
        assert api(client, server, "/videos", capture_id=SINGLE, fields="id").status_code == 200
    assert not caplog.records


def test_keep_alive_serves_many_requests_on_one_connection(server: FakeServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        reader = s.makefile("rb")
        for _ in range(3):
            s.sendall(b"GET /_fake/health HTTP/1.1\r\nHost: x\r\n\r\n")
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert json.loads(reader.read(length)) == {"ok": True}


# --- stats -----------------------------------------------------------------------------------


def test_stats_count_routes_bytes_and_statuses(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    client.get(url, headers={"Range": "bytes=0-99"})
    api(client, server, "/videos", capture_id=MAIN, fields="id")
    stats = httpx.get(server.base_url + "/_fake/stats").json()
    assert stats["api_requests"] == 2
    assert stats["api_by_route"] == {"GET /videos/{id}/download": 1, "GET /videos": 1}
    assert stats["blob_requests"] == 1 and stats["blob_bytes"] == 100
    assert stats["blob_ranges"] == [[f"video-{BIG_VIDEO}", 0, 99]]
    assert stats["status_counts"] == {"302": 1, "206": 1, "200": 1}
    reset = httpx.post(server.base_url + "/_fake/stats/reset").json()
    assert reset["api_requests"] == 0 and reset["blob_ranges"] == []


# --- faults ----------------------------------------------------------------------------------


def set_faults(server: FakeServer, **knobs: Any) -> dict[str, Any]:
    r = httpx.post(server.base_url + "/_fake/faults", json=knobs)
    assert r.status_code == 200, r.text
    return r.json()


def test_fault_admin_routes(server: FakeServer) -> None:
    merged = set_faults(server, latency_s=0.01)
    assert merged["latency_s"] == 0.01 and merged["url_ttl_s"] == 3600
    assert httpx.get(server.base_url + "/_fake/faults").json() == merged
    bad = httpx.post(server.base_url + "/_fake/faults", json={"cut_rate": 2})
    assert bad.status_code == 400
    assert httpx.post(server.base_url + "/_fake/faults", json={"nope": 1}).status_code == 400
    reset = httpx.post(server.base_url + "/_fake/faults/reset").json()
    assert reset["latency_s"] == 0


def test_latency(server: FakeServer, client: httpx.Client) -> None:
    set_faults(server, latency_s=0.3)
    start = time.monotonic()
    api(client, server, "/videos", capture_id=SINGLE, fields="id")
    assert time.monotonic() - start >= 0.3


def test_paced_blob_bodies_come_whole_at_their_rate(
    server: FakeServer, client: httpx.Client
) -> None:
    """``blob_flow_mb_s`` paces each body, ``blob_link_mb_s`` all of them together."""
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    data = blob_file(server, f"video-{BIG_VIDEO}")
    for knob in ("blob_flow_mb_s", "blob_link_mb_s"):
        set_faults(server, **{knob: 20})
        start = time.monotonic()
        r = client.get(url, headers={"Range": "bytes=0-1999999"})
        assert r.content == data[:2_000_000], knob
        assert time.monotonic() - start >= 0.09, knob  # 2 MB at 20 MB/s: 0.1 s
        set_faults(server, **{knob: 0})
    bad = httpx.post(server.base_url + "/_fake/faults", json={"blob_flow_mb_s": -1})
    assert bad.status_code == 400


def test_api_errors_and_throttling(server: FakeServer, client: httpx.Client) -> None:
    set_faults(server, api_error_rate=1.0)
    codes = {
        api(client, server, "/videos", capture_id=MAIN, fields="id").status_code for _ in range(12)
    }
    assert codes <= {500, 503} and codes
    set_faults(server, api_error_rate=0.0, api_429_rate=1.0, retry_after_s=7)
    r = api(client, server, "/videos", capture_id=MAIN, fields="id")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    set_faults(server, api_429_rate=0.5, seed=3)
    codes = [
        api(client, server, "/videos", capture_id=MAIN, fields="id").status_code for _ in range(40)
    ]
    assert 429 in codes and 200 in codes
    assert server.stats.snapshot()["faults_injected"]["api_429"] >= 1


def test_blob_errors_and_throttling(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{ONE_VIDEO}/download")
    set_faults(server, blob_error_rate=1.0)
    r = client.get(url)
    assert r.status_code == 503 and b"<Code>SlowDown</Code>" in r.content
    assert api(client, server, "/videos", capture_id=MAIN, fields="id").status_code == 200
    set_faults(server, blob_error_rate=0.0, blob_429_rate=1.0, retry_after_s=0)
    r = client.get(url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "0"


def test_cut_bodies(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{BIG_VIDEO}/download")
    set_faults(server, cut_rate=1.0)
    for _ in range(3):
        with pytest.raises(httpx.TransportError), client.stream("GET", url) as r:
            assert r.headers["Content-Length"] == "3000017"
            r.read()
    stats = server.stats.snapshot()
    assert stats["faults_injected"]["cut"] == 3
    assert stats["blob_bytes"] < 3 * 3_000_017
    set_faults(server, cut_rate=0.0)
    assert len(client.get(url).content) == 3_000_017


def test_connection_resets(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{ONE_VIDEO}/download")
    set_faults(server, reset_rate=1.0)
    with pytest.raises(httpx.TransportError):
        api(client, server, "/videos", capture_id=MAIN, fields="id")
    with pytest.raises(httpx.TransportError):
        client.get(url)
    assert server.stats.snapshot()["faults_injected"]["reset"] == 2


def test_outage_and_recovery(server: FakeServer, client: httpx.Client) -> None:
    url = signed_url(client, server, f"/videos/{ONE_VIDEO}/download")
    set_faults(server, outage=True)
    with pytest.raises(httpx.TransportError):
        api(client, server, "/videos", capture_id=MAIN, fields="id")
    with pytest.raises(httpx.TransportError):
        client.get(url)
    with pytest.raises(httpx.TransportError):
        client.get(server.plain_url)
    assert httpx.get(server.base_url + "/_fake/faults").json()["outage"] is True
    set_faults(server, outage=False)
    assert client.get(url).status_code == 200


def test_fault_decisions_are_reproducible_for_a_seed() -> None:
    from cupixfs.fake import Faults

    a, b = Faults(cut_rate=0.5, api_error_rate=0.5, seed=42), Faults()
    b.update(cut_rate=0.5, api_error_rate=0.5, seed=42)
    assert [a.decide("blob") for _ in range(50)] == [b.decide("blob") for _ in range(50)]
    assert [a.decide("api") for _ in range(50)] == [b.decide("api") for _ in range(50)]


# --- admin: dataset and replace --------------------------------------------------------------


def test_dataset_reports_sizes_and_hashes_that_match_the_bytes(server: FakeServer) -> None:
    model = httpx.get(server.base_url + "/_fake/dataset").json()
    files = [v["file"] for v in model["videos"]]
    files += [f for pc in model["pointclouds"] for f in pc["files"].values() if f]
    for f in files:
        data = blob_file(server, f["blob_id"])
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
        assert f["etag"] and f["plain_name"]


def test_replace_changes_content_and_etag(tmp_path: Path) -> None:
    data = generate(profile("test"), tmp_path)
    with FakeServer(data, token=TOKEN) as srv, httpx.Client(headers={"X-CUPIX-AUTH": TOKEN}) as c:
        url = signed_url(c, srv, f"/videos/{BIG_VIDEO}/download")
        before = c.get(url)
        r = httpx.post(srv.base_url + f"/_fake/blobs/video-{BIG_VIDEO}/replace")
        assert r.status_code == 200
        entry = r.json()
        after = c.get(url)
        assert after.headers["ETag"] != before.headers["ETag"]
        assert after.headers["ETag"] == f'"{entry["etag"]}"'
        assert after.content != before.content and len(after.content) == 3_000_017
        assert hashlib.sha256(after.content).hexdigest() == entry["sha256"]
        ifmatch = c.get(url, headers={"If-Match": before.headers["ETag"]})
        assert ifmatch.status_code == 412

        r = httpx.post(srv.base_url + f"/_fake/blobs/video-{BIG_VIDEO}/replace", json={"size": 7})
        assert r.json()["size"] == 7 and len(c.get(url).content) == 7
        model = httpx.get(srv.base_url + "/_fake/dataset").json()
        video = next(v for v in model["videos"] if v["id"] == BIG_VIDEO)
        assert video["file"]["size"] == 7 and video["file"]["generation"] == 2
        assert httpx.post(srv.base_url + "/_fake/blobs/nope/replace").status_code == 404
    # The new content survives a restart: dataset.json was rewritten.
    with FakeServer(data) as srv:
        assert srv.dataset.videos[BIG_VIDEO]["file"]["size"] == 7


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_serves_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cupixfs.fake",
            "serve",
            "--data",
            str(tmp_path),
            "--profile",
            "test",
            "--per-page",
            "5",
            "--token",
            "t0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) == {"api_url", "base_url", "plain_url", "token"} and info["token"] == "t0"
        r = httpx.get(
            info["api_url"] + "/videos",
            params={"capture_id": MAIN, "fields": "id"},
            headers={"X-CUPIX-AUTH": "t0"},
        )
        assert r.json()["result"]["pagination"]["per_page"] == 5
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
