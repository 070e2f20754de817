"""Users, API tokens, templates and one-time browser links: who may do what."""

from __future__ import annotations

import secrets
import threading
import time

from outgrow.domain.jobs import JobSpec, TemplateView, TokenView, UserView
from outgrow.errors import AuthError, NotFoundError, ValidationError
from outgrow.store import Store


class Accounts:
    def __init__(self, store: Store):
        self.store = store
        self._guard = threading.Lock()
        self._open_codes: dict[str, tuple[int, str, float]] = {}  # code → user, job, expiry

    def bootstrap(self, admin_password: str | None) -> tuple[str, str] | None:
        """On the first start: the admin user; returns (password, API token) once."""
        if self.store.user_count() > 0:
            return None
        password = admin_password or secrets.token_urlsafe(12)
        user = self.store.create_user("admin", password, is_admin=True)
        _, token = self.store.create_token(user.id, "bootstrap")
        return password, token

    def authenticate(self, token: str) -> UserView:
        user = self.store.user_for_token(token) if token else None
        if user is None:
            raise AuthError("missing or invalid API token")
        return user

    def login(self, name: str, password: str) -> UserView:
        user = self.store.check_password(name, password)
        if user is None:
            raise AuthError("wrong user name or password")
        return user

    def create_user(
        self, actor: UserView, name: str, password: str, is_admin: bool = False
    ) -> UserView:
        if not actor.is_admin:
            raise AuthError("only admins can add users")
        if len(password) < 8:
            raise ValidationError("password must have at least 8 characters", field="password")
        return self.store.create_user(name, password, is_admin)

    def create_token(self, actor: UserView, name: str) -> tuple[TokenView, str]:
        return self.store.create_token(actor.id, name)

    def list_tokens(self, actor: UserView) -> list[TokenView]:
        return self.store.list_tokens(actor.id)

    def revoke_token(self, actor: UserView, token_id: int) -> None:
        self.store.revoke_token(actor.id, token_id)

    # ---- templates --------------------------------------------------------------------
    def save_template(self, actor: UserView, name: str, spec: JobSpec) -> TemplateView:
        return self.store.save_template(actor.id, name, spec)

    def list_templates(self, actor: UserView) -> list[TemplateView]:
        return self.store.list_templates(None if actor.is_admin else actor.id)

    def get_template(self, actor: UserView, name: str) -> TemplateView:
        t = self.store.get_template(None if actor.is_admin else actor.id, name)
        if t is None:
            raise NotFoundError(f"no template {name!r}", field="template")
        return t

    def delete_template(self, actor: UserView, name: str) -> None:
        self.store.delete_template(None if actor.is_admin else actor.id, name)

    # ---- one-time browser links (outgrow open) ----------------------------------------
    def open_code(self, actor: UserView, job_id: str, ttl_s: float) -> str:
        """A code good once, for this user and job, for ``ttl_s`` seconds; the stable-URL
        proxy exchanges it for a session."""
        code = "otp_" + secrets.token_urlsafe(24)
        with self._guard:
            now = time.monotonic()
            self._open_codes = {c: v for c, v in self._open_codes.items() if v[2] > now}
            self._open_codes[code] = (actor.id, job_id, now + ttl_s)
        return code

    def redeem_open_code(self, code: str, job_id: str) -> tuple[UserView, str]:
        with self._guard:
            entry = self._open_codes.pop(code, None)
        if entry is None or entry[2] < time.monotonic() or entry[1] != job_id:
            raise AuthError("this link was already used or has expired; run `outgrow open` again")
        user = self.store.get_user_by_id(entry[0])
        if user is None:
            raise AuthError("the user of this link no longer exists")
        _, token = self.store.create_token(entry[0], f"browser-{job_id}")
        return user, token
