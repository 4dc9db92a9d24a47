"""aio:mailbox / aio:post: library messages between workers, relayed by the master,
that never reach the app's on_message (tests/apps/mailbox_app.lua, -c 2)."""

from __future__ import annotations

import urllib.request

from conftest import wait_until


def get(server, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
        return r.read().decode()


def test_posts_reach_the_mailbox_not_the_hook(start_server):
    server = start_server("tests/apps/mailbox_app.lua", workers=2)
    assert get(server, "/post?to=*&data=hello").startswith("true nil")
    get(server, "/post?to=*&kind=nobox&data=lost")  # a mailbox nobody opened: dropped quietly
    get(server, "/post?to=*&kind=mail&data=plain")  # the app's own mail still reaches its hook

    def both_workers_have(text: str) -> bool:
        seen = {}
        for _ in range(40):  # connections land on either worker
            body = get(server, "/got")
            seen[body.split("\n", 1)[0]] = body
            if len(seen) == 2:
                break
        return len(seen) == 2 and all(text in body for body in seen.values())

    wait_until(lambda: both_workers_have(": hello") and both_workers_have(": plain"), 10,
               message="the posts and the mail in both workers")
    for _ in range(10):
        body = get(server, "/got")
        assert "box from" in body and "hook from" in body
        assert "hook from 0: hello" not in body and "hook from 1: hello" not in body
        assert "lost" not in body and "box from 0: plain" not in body
    assert "ERROR" not in server.stderr_text()
