"""The stable-URL proxy: ``http://<control plane>/jobs/<job-id>/…`` reaches the job's
Jupyter server wherever the job runs now, and keeps browser WebSockets open across moves;
``/user/<name>/…`` does the same for JupyterHub's servers (see "JupyterHub servers").

Each Jupyter job runs jupyter_server with ``base_url=/jobs/<job-id>/`` and a random token
of its own on port 8888 of its instance address; a move changes that address. The proxy
(``StableUrlProxy``, an ASGI app that ``outgrow.server.create_app`` puts in front of the API
for ``/jobs/…`` with the ``ProxyRoute`` middleware, and registers in
``ControlPlane.move_hooks``) makes the address irrelevant:

Auth (``request.py``)
    The client proves who it is with an outgrow API token (``Authorization: token|Bearer``,
    a one-time ``?token=`` that becomes the HttpOnly, SameSite=Lax cookie
    ``outgrow_session`` scoped to ``/jobs/<id>/``, or that cookie). A job the user may not
    see answers 404 like the API; no valid credentials, 401 JSON. The proxy strips the
    client's credentials and sends ``Authorization: token <the job's Jupyter token>``
    upstream; that token never reaches the client (masked in answers, as they stream).

HTTP (``http.py``, ``upstream.py``)
    One keep-alive pool per job (a small asyncio HTTP/1.1 client: httpx cost 1-3 ms a
    request here); request and answer bodies stream (nothing large is buffered);
    hop-by-hop headers and Host dropped, ``X-Forwarded-*`` set. ``ProxyRoute`` sends
    ``/jobs/…`` to the proxy ahead of the API's routing.

Holding (``core.py``)
    While a job is Suspending, Suspended or Resuming, or between the two hooks below (a
    Floating job's source serves on until its checkpoint begins: creating the target, which
    takes seconds locally and minutes on a cloud, is no downtime), new requests and
    WebSocket handshakes wait on a per-job ``asyncio.Event`` for
    up to ``OUTGROW_PROXY_HOLD_SECONDS`` (120), at most ``OUTGROW_PROXY_HOLD_MAX`` (256)
    per job (beyond: 503 + Retry-After), then go to wherever the job is. A request to a
    Suspended job resumes it (as the requesting user). States are re-read from the store
    at most every 0.5 s per user and job, and at once after each hook.

Moves (the ``MoveHooks`` protocol; docs/design.md, "A move, step by step", steps 2 and 5)
    ``before_checkpoint(job)`` runs on the event loop (the worker thread waits ≤ 5 s): the
    job becomes "holding", every in-flight upstream HTTP exchange is cancelled (a GET/HEAD/
    OPTIONS without a body that had no answer yet is held and sent again after the move;
    other unanswered requests get 503 + Retry-After; an answer already streaming is cut),
    the job's keep-alive pool is closed, and every upstream WebSocket is closed with a
    closing handshake, after which what the server sent before its Close frame has been
    forwarded (CRIU must see no peer outside the job). Client → kernel messages arriving
    meanwhile are queued in order. ``after_move(job)`` re-opens each upstream WebSocket at
    the job's current address with the same URL (same ``session_id``, so jupyter_server
    replays what the kernel sent meanwhile), sends the queued messages in order, and
    releases the held requests. A job that is gone or failed gets its client WebSockets
    closed with 1011 and a reason; a Suspended job keeps them open (a message from the
    client resumes the job; a watcher re-attaches or closes them when its state changes).

JupyterHub servers (``hub.py``; docs/jupyterhub.md)
    With ``OUTGROW_JUPYTERHUB_USERS`` set, the proxy also serves ``OUTGROW_JUPYTERHUB_PATH``
    (``/user/``): a request under a live hub job's prefix (``/user/<name>/``, the longest
    prefix winning, so ``/user/<name>/<server>/`` too) goes to that job *passed through*:
    no outgrow credentials asked, no Jupyter token injected, nothing masked; Host, Origin,
    Cookie, Authorization and the query go upstream as sent, because the job's
    ``jupyterhub-singleuser`` authenticates the request with the hub's OAuth (cookie or
    hub token) and checks Origin against Host itself, exactly as behind the hub's
    configurable-http-proxy alone. outgrow's own credentials (the ``outgrow_session``
    cookie, an ``og_`` token in Authorization) are stripped, never handed to a user's
    server. Only hub jobs are reachable that way: only accounts listed in
    ``OUTGROW_JUPYTERHUB_USERS`` can create them, with a prefix under that path that no
    other live job holds (controlplane/hub.py); any other path under it (an unknown or
    ended prefix, a dot segment) is 404, and a hub job is not served under
    ``/jobs/<id>/``. Holding, moves and resuming work as above (a request to a suspended
    hub job resumes it on behalf of the job's owner, the hub's account).

Known limits: jupyter_server buffers for the *last* session of a kernel only, so with
several clients on one kernel only one gets the messages sent during the move; an answer
already streaming when a checkpoint begins is cut; a held upload is refused, not replayed.
"""

from outgrow.proxy.core import ProxyRoute, StableUrlProxy

__all__ = ["ProxyRoute", "StableUrlProxy"]
