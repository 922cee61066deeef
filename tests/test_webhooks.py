from __future__ import annotations

import pytest

from gateway.webhooks import webhook_source


@pytest.mark.parametrize(
    ("scope", "source"),
    [
        ({"type": "http", "path": "/webhooks/moncreneau"}, "moncreneau"),
        ({"type": "http", "path": "/webhooks/"}, None),
        ({"type": "http", "path": "/webhooks/a/b"}, None),
        ({"type": "http", "path": "/admin/v1/events"}, None),
        ({"type": "websocket", "path": "/webhooks/moncreneau"}, None),
    ],
)
def test_only_posts_to_one_path_segment_under_webhooks_take_the_fast_path(
    scope: dict[str, str], source: str | None
) -> None:
    assert webhook_source(scope) == source
