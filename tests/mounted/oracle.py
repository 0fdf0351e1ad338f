"""An independent reading of the fake API: what the mounted tree should contain.

Written against the API pages with plain synchronous httpx, sharing no code
with cupixfs's own client, so a bug there cannot hide itself here.
"""

from __future__ import annotations

from typing import Any

import httpx

from cupixfs.fake.server import FakeServer


class Oracle:
    def __init__(self, fake: FakeServer) -> None:
        self._http = httpx.Client(base_url=fake.api_url + "/", headers={"X-CUPIX-AUTH": fake.token})

    def list_all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._http.get(path, params={**params, "page": page}).raise_for_status().json()
            items += body["result"]["data"]
            pagination = body["result"]["pagination"]
            if "next_page" in pagination:
                next_page = pagination["next_page"]
            else:  # only totals (the vendor's Project example)
                next_page = page + 1 if page < pagination["total_pages"] else None
            if next_page is None:
                return items
            page = next_page

    def pages(self, path: str, **params: Any) -> int:
        body = self._http.get(path, params=params).raise_for_status().json()
        return int(body["result"]["pagination"]["total_pages"])

    def meta(self, pc_id: int) -> dict[str, Any]:
        return self._http.get(f"pointclouds/{pc_id}/meta", params={"fields": "id"}).json()["result"]

    def sub_files(self, pc: dict[str, Any]) -> set[str]:
        attrs = pc["attributes"]
        names = {attrs["name"], "meta.json", "transform.json"}
        if attrs.get("mesh_uploaded_at"):
            names.add("mesh.zip")
        if attrs.get("ply_uploaded_at"):
            names.add("pointcloud.ply")
        return names

    def expected_tree(self, capture_ids: list[int], record_ids: list[int]) -> set[str]:
        """Every file path (relative to the mount) the API says should exist."""
        fields = "id,name,kind,cluster,mesh_uploaded_at,ply_uploaded_at"
        paths: set[str] = set()
        for cid in capture_ids:
            for video in self.list_all("videos", fields="id,name", capture_id=cid):
                paths.add(f"captures/{cid}/videos/{video['attributes']['name']}")
            for pc in self.list_all(
                "pointclouds", fields=fields, capture_id=cid, pointcloud_type="3d_reconstructed"
            ):
                if pc["attributes"]["kind"] == "sub":
                    for name in self.sub_files(pc):
                        paths.add(f"captures/{cid}/pointclouds/{pc['id']}/{name}")
        for pc in self.list_all("pointclouds", fields=fields, pointcloud_type="all"):
            if pc["attributes"]["kind"] == "sub":
                cluster = pc["attributes"]["cluster"]["id"]
                for name in self.sub_files(pc):
                    paths.add(f"clusters/{cluster}/{pc['id']}/{name}")
        for rid in record_ids:
            for pc in self.list_all(
                "pointclouds", fields=fields, record_id=rid, pointcloud_type="uploaded"
            ):
                if pc["attributes"]["kind"] == "sub":
                    for name in self.sub_files(pc):
                        paths.add(f"records/{rid}/{pc['id']}/{name}")
        return paths
