"""The App Library: built-in images, users' derived (venv) images and OCI images, kept in
the store. OCI images are imported or pulled into the host's cache through the provider
(agent/oci.py) and recorded with their config and what their rootfs offers, so a job is
checked against them when it is submitted (and again when it starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from outgrow.domain.images import BUILTIN_IMAGES, ImageSpec, parse_pip_spec
from outgrow.domain.jobs import ImageView, JobSpec, UserView
from outgrow.domain.oci import (
    OciConfig,
    OciImage,
    RootfsFacts,
    check_jupyter,
    check_runnable,
    check_script_job,
    image_name,
    suggest_name,
)
from outgrow.domain.states import is_terminal
from outgrow.errors import ConflictError, NotFoundError
from outgrow.providers.base import Provider
from outgrow.store import Store


def image_view(spec: ImageSpec, **extra: Any) -> ImageView:
    """The API's view of an image spec (built-in, or derived by a user)."""
    d = spec.to_dict()
    oci = d.pop("oci", None)
    return ImageView(**{**d, "oci": oci, **extra})


def oci_view(name: str, image: OciImage, facts: RootfsFacts, owner: str | None) -> ImageView:
    c = image.config
    command = " ".join(c.command) or "(none)"
    script = "with /bin/sh or python3" if facts.runs_scripts else "not possible: no shell"
    docs = (
        f"# {name}\n\nOCI image `{image.reference}` ({image.digest}).\n\n"
        f"* **Runs**: its own command `{command}`, or your `--script` ({script}).\n"
    )
    if facts.jupyter_modes:
        modes = " or ".join(f"`--jupyter {m}`" for m in facts.jupyter_modes)
        docs += f"* **Jupyter**: start it with {modes}, with outgrow's token and base URL.\n"
    return ImageView(
        name=name,
        kind="python",
        pip=[],
        description=c.description or f"OCI image {image.reference}",
        docs=docs,
        default_port=c.port,
        owner=owner,
        format="oci",
        oci={"digest": image.digest, "reference": image.reference},
        size_bytes=image.size,
        config=c.to_dict(),
        labels=dict(c.labels),
        facts=facts.to_dict(),
        jupyter=list(facts.jupyter_modes),
    )


class Images:
    def __init__(self, store: Store, provider: Provider | None = None):
        self.store = store
        self.provider = provider

    def spec(self, name: str) -> ImageSpec:
        """The spec of image ``name`` (NotFoundError names it)."""
        view = self.store.get_image(name)
        if view is None:
            if name in BUILTIN_IMAGES:
                return BUILTIN_IMAGES[name]
            raise NotFoundError(f"unknown image {name!r}", field="image")
        return ImageSpec.from_dict(view.model_dump())

    def for_job(self, spec: JobSpec) -> ImageSpec:
        """The image as ``spec``'s job runs it (``--jupyter`` on an OCI image)."""
        return self.spec(spec.image).for_job(spec.jupyter)

    def known(self, name: str) -> bool:
        return name in BUILTIN_IMAGES or self.store.get_image(name) is not None

    def _decorated(self, view: ImageView) -> ImageView:
        if view.format != "oci" or view.digest is None:
            return view
        facts = RootfsFacts.from_dict(view.facts) if view.facts else None
        cached = self.provider.image_locations(view.digest) if self.provider else []
        modes = list(facts.jupyter_modes) if facts else []
        return view.model_copy(update={"cached": cached, "jupyter": modes})

    def list(self) -> list[ImageView]:
        builtin = [image_view(i, builtin=True) for i in BUILTIN_IMAGES.values()]
        return builtin + [self._decorated(v) for v in self.store.list_images()]

    def add(
        self, actor: UserView, name: str, pip: str, base: str | None, description: str
    ) -> ImageView:
        self._free(name)
        base_spec = self.spec(base) if base else BUILTIN_IMAGES["python"]
        spec = base_spec.derive(
            name, parse_pip_spec(pip), description or f"{base_spec.name} + {pip}"
        )
        view = image_view(spec, docs=base_spec.docs, base=base_spec.name, owner=actor.name)
        return self.store.add_image(view, actor.id)

    def _free(self, name: str) -> None:
        if name in BUILTIN_IMAGES or self.store.get_image(name) is not None:
            raise ConflictError(f"image {name!r} already exists", field="name")

    def _provider(self) -> Provider:
        assert self.provider is not None, "OCI images need the provider"
        return self.provider

    # ---- OCI images -------------------------------------------------------------------
    def import_archive(self, actor: UserView, archive: Path, name: str) -> ImageView:
        """Import an image archive (the API's upload) as ``name``."""
        self._free(image_name(name))
        image, facts = self._provider().import_image(archive, name)
        return self._record(actor, name, image, facts)

    def pull(self, actor: UserView, reference: str, name: str | None) -> ImageView:
        """Pull ``reference`` from its registry as ``name`` (default: from the reference)."""
        name = image_name(name or suggest_name(reference))
        self._free(name)
        image, facts = self._provider().pull_image(reference)
        return self._record(actor, name, image, facts)

    def _record(self, actor: UserView, name: str, image: OciImage, facts: RootfsFacts) -> ImageView:
        try:
            view = self.store.add_image(oci_view(name, image, facts, actor.name), actor.id)
        except Exception:
            self._drop_unused(image.digest)  # nothing left of a failed import
            raise
        return self._decorated(view)

    def _drop_unused(self, digest: str) -> None:
        if not any(v.digest == digest for v in self.store.list_images()):
            self._provider().remove_image(digest)

    def check_job(self, spec: JobSpec) -> ImageSpec:
        """The image ``spec`` runs, after the checks its OCI image allows now (ValidationError
        naming what is missing); a rootfs not unpacked yet is checked at start."""
        image = self.for_job(spec)
        if image.oci is None:
            return image
        view = self.store.get_image(spec.image)
        assert view is not None and view.config is not None
        check_runnable(spec.image, OciConfig.from_dict(view.config), spec.script, spec.jupyter)
        facts = RootfsFacts.from_dict(view.facts) if view.facts else None
        if facts is None and self.provider is not None:
            facts = self.provider.image_facts(image.oci.digest)
            if facts is not None:
                self.store.set_image_facts(spec.image, facts.to_dict())
        if facts is not None:
            if spec.script.strip():
                check_script_job(spec.image, facts)
            if spec.jupyter is not None:
                check_jupyter(spec.image, spec.jupyter, facts)
        return image

    def remove(self, actor: UserView, name: str) -> None:
        if name in BUILTIN_IMAGES:
            raise ConflictError(f"image {name!r} is built in", field="name")
        img = self.store.get_image(name)
        if img is None or (not actor.is_admin and img.owner != actor.name):
            raise NotFoundError(f"no image {name!r}", field="name")
        using = sorted(
            j.name
            for j in self.store.list_jobs(None)
            if j.spec.image == name and not is_terminal(j.status)
        )
        if using and img.format == "oci":
            raise ConflictError(
                f"image {name!r} is used by job(s) {', '.join(using[:5])} that have not "
                "ended: cancel them first",
                field="name",
            )
        self.store.delete_image(name)
        if img.digest is not None:
            self._drop_unused(img.digest)
