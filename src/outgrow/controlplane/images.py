"""The App Library: built-in images and users' derived images (kept in the store)."""

from __future__ import annotations

from typing import Any

from outgrow.domain.images import BUILTIN_IMAGES, ImageSpec, parse_pip_spec
from outgrow.domain.jobs import ImageView, UserView
from outgrow.errors import ConflictError, NotFoundError
from outgrow.store import Store


def image_view(spec: ImageSpec, **extra: Any) -> ImageView:
    """The API's view of an image spec (built-in, or derived by a user)."""
    return ImageView(**{**spec.to_dict(), **extra})


class Images:
    def __init__(self, store: Store):
        self.store = store

    def spec(self, name: str) -> ImageSpec:
        """The spec of image ``name`` (NotFoundError names it)."""
        view = self.store.get_image(name)
        if view is None:
            if name in BUILTIN_IMAGES:
                return BUILTIN_IMAGES[name]
            raise NotFoundError(f"unknown image {name!r}", field="image")
        return ImageSpec.from_dict(view.model_dump())

    def known(self, name: str) -> bool:
        return name in BUILTIN_IMAGES or self.store.get_image(name) is not None

    def list(self) -> list[ImageView]:
        builtin = [image_view(i, builtin=True) for i in BUILTIN_IMAGES.values()]
        return builtin + self.store.list_images()

    def add(
        self, actor: UserView, name: str, pip: str, base: str | None, description: str
    ) -> ImageView:
        if name in BUILTIN_IMAGES or self.store.get_image(name) is not None:
            raise ConflictError(f"image {name!r} already exists", field="name")
        base_spec = self.spec(base) if base else BUILTIN_IMAGES["python"]
        spec = base_spec.derive(
            name, parse_pip_spec(pip), description or f"{base_spec.name} + {pip}"
        )
        view = image_view(spec, docs=base_spec.docs, base=base_spec.name, owner=actor.name)
        return self.store.add_image(view, actor.id)

    def remove(self, actor: UserView, name: str) -> None:
        if name in BUILTIN_IMAGES:
            raise ConflictError(f"image {name!r} is built in", field="name")
        img = self.store.get_image(name)
        if img is None or (not actor.is_admin and img.owner != actor.name):
            raise NotFoundError(f"no image {name!r}", field="name")
        self.store.delete_image(name)
