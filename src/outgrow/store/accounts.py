"""Users, API tokens, job templates and images."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from outgrow.domain.jobs import ImageView, JobSpec, TemplateView, TokenView, UserView
from outgrow.errors import ConflictError, NotFoundError, ValidationError
from outgrow.store.base import StoreBase, flush_or_conflict, get_user_row, valid_name
from outgrow.store.models import Image, Template, Token, User, utcnow
from outgrow.store.records import image_view, template_view, token_view, user_view
from outgrow.store.security import (
    TOKEN_PREFIX,
    dummy_hash,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)

TOKEN_NAME_MAX = 100

_IMAGES = select(Image, User.name).outerjoin(User, Image.owner_id == User.id)


class AccountsMixin(StoreBase):
    """The user-facing catalog of the store (mixed into :class:`outgrow.store.Store`)."""

    # --- users and tokens -------------------------------------------------------------

    def create_user(self, name: str, password: str, is_admin: bool = False) -> UserView:
        valid_name(name, "name", "user name")
        if not password:
            raise ValidationError("password must not be empty", field="password")
        password_hash = hash_password(password)  # slow: outside the transaction
        conflict = f"user {name!r} already exists"
        with self._tx(write=True) as s:
            if s.scalar(select(User.id).where(User.name == name)) is not None:
                raise ConflictError(conflict, field="name")
            user = User(name=name, password_hash=password_hash, is_admin=is_admin)
            s.add(user)
            flush_or_conflict(s, conflict, "name")
            return user_view(user)

    def get_user(self, name: str) -> UserView | None:
        with self._tx() as s:
            user = s.scalar(select(User).where(User.name == name))
            return None if user is None else user_view(user)

    def get_user_by_id(self, user_id: int) -> UserView | None:
        with self._tx() as s:
            user = s.get(User, user_id)
            return None if user is None else user_view(user)

    def user_count(self) -> int:
        with self._tx() as s:
            return s.scalar(select(func.count()).select_from(User)) or 0

    def check_password(self, name: str, password: str) -> UserView | None:
        with self._tx() as s:
            user = s.scalar(select(User).where(User.name == name))
            view = None if user is None else user_view(user)
            stored = dummy_hash() if user is None else user.password_hash
        ok = verify_password(password, stored)  # slow: outside the transaction
        return view if ok else None

    def create_token(self, user_id: int, name: str) -> tuple[TokenView, str]:
        """A new API token; the secret is returned here once and never stored."""
        if not name or len(name) > TOKEN_NAME_MAX or not name.isprintable():
            raise ValidationError(
                f"token name must be 1-{TOKEN_NAME_MAX} printable characters", field="name"
            )
        secret, prefix, digest = new_token()
        with self._tx(write=True) as s:
            get_user_row(s, user_id)
            token = Token(user_id=user_id, name=name, prefix=prefix, token_hash=digest)
            s.add(token)
            flush_or_conflict(s, "token collision, try again")
            return token_view(token), secret

    def user_for_token(self, secret: str) -> UserView | None:
        """The user of a valid, unrevoked token (and record its use), else None."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        digest = token_hash(secret)
        with self._tx() as s:
            row = s.execute(
                select(Token.id, User)
                .join(User, Token.user_id == User.id)
                .where(Token.token_hash == digest, Token.revoked_at.is_(None))
            ).first()
            if row is None:
                return None
            token_id, view = row[0], user_view(row[1])
        with self._tx(write=True) as s:
            used = s.execute(
                update(Token)
                .where(Token.id == token_id, Token.revoked_at.is_(None))
                .values(last_used_at=utcnow())
            )
            assert isinstance(used, CursorResult)
            return view if used.rowcount else None  # revoked in between

    def list_tokens(self, user_id: int) -> list[TokenView]:
        with self._tx() as s:
            rows = s.scalars(select(Token).where(Token.user_id == user_id).order_by(Token.id))
            return [token_view(t) for t in rows]

    def revoke_token(self, user_id: int, token_id: int) -> None:
        with self._tx(write=True) as s:
            token = s.get(Token, token_id)
            if token is None or token.user_id != user_id:
                raise NotFoundError(f"no token {token_id}", field="token")
            if token.revoked_at is None:
                token.revoked_at = utcnow()

    # --- templates ----------------------------------------------------------------------

    def _templates(
        self, s: Session, owner_id: int | None, name: str | None
    ) -> list[tuple[Template, str]]:
        query = select(Template, User.name).join(User, Template.owner_id == User.id)
        if owner_id is not None:
            query = query.where(Template.owner_id == owner_id)
        if name is not None:
            query = query.where(Template.name == name)
        rows = s.execute(query.order_by(Template.name, User.name)).all()
        if name is not None and len(rows) > 1:
            owners = ", ".join(r[1] for r in rows)
            raise ConflictError(f"several users have a template {name!r} ({owners})")
        return [(r[0], r[1]) for r in rows]

    def save_template(self, owner_id: int, name: str, spec: JobSpec) -> TemplateView:
        valid_name(name, "name", "template name")
        conflict = f"you already have a template named {name!r}"
        with self._tx(write=True) as s:
            owner = get_user_row(s, owner_id)
            if self._templates(s, owner_id, name):
                raise ConflictError(conflict, field="name")
            template = Template(owner_id=owner_id, name=name, spec=spec.model_dump(mode="json"))
            s.add(template)
            flush_or_conflict(s, conflict, "name")
            return template_view(template, owner.name)

    def get_template(self, owner_id: int | None, name: str) -> TemplateView | None:
        """``owner_id`` None = any owner (ConflictError if several have that name)."""
        with self._tx() as s:
            rows = self._templates(s, owner_id, name)
            return template_view(*rows[0]) if rows else None

    def list_templates(self, owner_id: int | None) -> list[TemplateView]:
        with self._tx() as s:
            return [template_view(t, owner) for t, owner in self._templates(s, owner_id, None)]

    def delete_template(self, owner_id: int | None, name: str) -> None:
        with self._tx(write=True) as s:
            rows = self._templates(s, owner_id, name)
            if not rows:
                raise NotFoundError(f"no template {name!r}", field="name")
            s.delete(rows[0][0])

    # --- images -------------------------------------------------------------------------

    def add_image(self, image: ImageView, owner_id: int | None) -> ImageView:
        """Record an image; its ``owner`` is the user ``owner_id`` (None: no owner)."""
        valid_name(image.name, "name", "image name")
        conflict = f"image {image.name!r} already exists"
        with self._tx(write=True) as s:
            owner = None if owner_id is None else get_user_row(s, owner_id).name
            if s.scalar(select(Image.id).where(Image.name == image.name)) is not None:
                raise ConflictError(conflict, field="name")
            row = Image(
                name=image.name,
                kind=image.kind,
                pip=list(image.pip),
                description=image.description,
                docs=image.docs,
                default_port=image.default_port,
                builtin=image.builtin,
                base=image.base,
                owner_id=owner_id,
                format=image.format,
                oci_digest=image.digest,
                oci_reference=image.oci["reference"] if image.oci else None,
                size_bytes=image.size_bytes,
                oci_config=image.config,
                labels=image.labels or None,
                oci_facts=image.facts,
            )
            s.add(row)
            flush_or_conflict(s, conflict, "name")
            return image_view(row, owner)

    def get_image(self, name: str) -> ImageView | None:
        with self._tx() as s:
            row = s.execute(_IMAGES.where(Image.name == name)).first()
            return None if row is None else image_view(row[0], row[1])

    def list_images(self) -> list[ImageView]:
        with self._tx() as s:
            rows = s.execute(_IMAGES.order_by(Image.name)).all()
            return [image_view(r[0], r[1]) for r in rows]

    def set_image_facts(self, name: str, facts: dict[str, Any]) -> None:
        """Record what an OCI image's rootfs offers (found when it was unpacked)."""
        with self._tx(write=True) as s:
            row = s.scalar(select(Image).where(Image.name == name))
            if row is None:
                raise NotFoundError(f"no image {name!r}", field="name")
            row.oci_facts = dict(facts)

    def delete_image(self, name: str) -> None:
        with self._tx(write=True) as s:
            row = s.scalar(select(Image).where(Image.name == name))
            if row is None:
                raise NotFoundError(f"no image {name!r}", field="name")
            s.delete(row)
