"""`r3 query --server URL`: a queries file answered by a running service instead of a local flow run.

Standard library only (urllib), so the command starts as fast as the rest of the CLI.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from r3tasks.errors import R3Error
from r3tasks.inputs.queries import Query
from r3tasks.settings.operations import ServeSettings


class ServiceError(R3Error):
    """The service could not be reached, or refused the request; `str()` is one line."""


def query_rows(queries: Iterable[Query]) -> list[dict]:
    """Queries read from a file, back as rows of the request schema (absent fields left out)."""
    return [{k: v for k, v in asdict(q).items() if v is not None} for q in queries]


class ServiceClient:
    def __init__(self, url: str, serve: ServeSettings) -> None:
        self.url = url.rstrip("/")
        self.timeout = serve.client_timeout_seconds
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if serve.token is not None:
            self.headers["Authorization"] = f"Bearer {serve.token.get_secret_value()}"

    def query(
        self,
        queries: Iterable[Query],
        gallery: str | None = None,
        gallery_version: int | str | None = None,
        where: str | None = None,
        top_k: int | None = None,
    ) -> dict:
        """The service's answer to these queries: `{"lineage": ..., "results": [...]}`."""
        body = {
            "queries": query_rows(queries),
            "gallery": gallery,
            "gallery_version": gallery_version,
            "where": where,
            "top_k": top_k,
        }
        return self._call("POST", "/v1/query", body)

    def item_texts(self, ids: Iterable[str], gallery: str | None, gallery_version: int) -> dict[str, str | None]:
        """The stored text of each item (for the printed table), at the version the answer came from."""
        params = urllib.parse.urlencode(
            {k: v for k, v in {"gallery": gallery, "gallery_version": gallery_version}.items() if v is not None}
        )
        texts: dict[str, str | None] = {}
        for item_id in dict.fromkeys(ids):
            path = "/v1/items/" + urllib.parse.quote(item_id, safe="/") + f"?{params}"
            try:
                texts[item_id] = self._call("GET", path)["text"]
            except ServiceError:
                texts[item_id] = None  # a caption is a nicety of the table; its absence is no error
        return texts

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ServiceError(f"the r3 service at {self.url} answered {error.code}: {_error_line(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServiceError(f"cannot reach the r3 service at {self.url}: {reason}") from None
        except ValueError as error:
            raise ServiceError(f"the r3 service at {self.url} sent no JSON ({error})") from None


def _error_line(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)
