"""OCI images as data (domain/oci.py, ImageSpec.oci, JobSpec.jupyter): parsing an image
config, names, and the checks a job gets against what an image's rootfs offers."""

from __future__ import annotations

import pytest

from outgrow.domain.images import BUILTIN_IMAGES, ImageSpec
from outgrow.domain.jobs import JobSpec
from outgrow.domain.oci import (
    OciConfig,
    OciImage,
    OciRef,
    RootfsFacts,
    check_jupyter,
    check_reference,
    check_runnable,
    check_script_job,
    image_name,
    suggest_name,
)
from outgrow.errors import ValidationError

DIGEST = "sha256:" + "0123456789abcdef" * 4
CONFIG = {
    "architecture": "amd64",
    "config": {
        "Entrypoint": ["/entry"],
        "Cmd": ["serve", "--port=8888"],
        "Env": ["PATH=/opt/bin:/usr/bin", "EMPTY=", "EQ=a=b"],
        "WorkingDir": "/work",
        "User": "1000:1000",
        "ExposedPorts": {"8888/tcp": {}, "22/tcp": {}},
        "Labels": {"org.opencontainers.image.description": "a notebook"},
    },
}


def test_config_is_parsed() -> None:
    c = OciConfig.from_image_config(CONFIG)
    assert c.entrypoint == ("/entry",) and c.cmd == ("serve", "--port=8888")
    assert c.command == ("/entry", "serve", "--port=8888")
    assert c.env == {"PATH": "/opt/bin:/usr/bin", "EMPTY": "", "EQ": "a=b"}
    assert (c.working_dir, c.user) == ("/work", "1000:1000")
    assert c.exposed_ports == ("22/tcp", "8888/tcp") and c.port == 8888
    assert c.description == "a notebook" and c.search_path == "/opt/bin:/usr/bin"
    assert OciConfig.from_dict(c.to_dict()) == c
    empty = OciConfig.from_image_config({"config": None})
    assert empty.command == () and empty.port is None
    assert empty.search_path.startswith("/usr/local/sbin:")
    image = OciImage(DIGEST, "nb.tar", 10, c, created="2026-01-01T00:00:00Z")
    assert OciImage.from_dict(image.to_dict()) == image


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"Cmd": "serve"}, "Cmd must be a list of strings"),
        ({"Env": ["NOEQUALS"]}, "Env entry 'NOEQUALS' is not K=V"),
        ({"Labels": {"a": 1}}, "Labels must map to strings"),
        ({"ExposedPorts": ["8888/tcp"]}, "ExposedPorts must be an object"),
        ({"WorkingDir": 3}, "WorkingDir must be a string"),
    ],
)
def test_malformed_config(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OciConfig.from_image_config({"config": config})


def test_names() -> None:
    assert image_name("nb-1") == "nb-1"
    for bad in ("../x", "a/b", "A", "-x", "x" * 41, "", "a b"):
        with pytest.raises(ValidationError, match="invalid image name"):
            image_name(bad)
    assert suggest_name("./My_Image.tar") == "my-image"
    assert suggest_name("ghcr.io/org/nb:1") == "nb"
    assert suggest_name("reg:5000/x/Deep.Learning@sha256:ab") == "deep-learning"
    assert suggest_name("/tmp/layout/") == "layout"
    assert suggest_name("___.tar") == "image"
    with pytest.raises(ValidationError, match="invalid image digest"):
        OciRef("sha256:xyz")


def test_image_spec_with_oci() -> None:
    spec = ImageSpec("nb", "python", (), oci=OciRef(DIGEST, "nb.tar"))
    assert spec.is_oci and ImageSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["oci"] == {"digest": DIGEST, "reference": "nb.tar"}
    assert ImageSpec.from_dict({**spec.to_dict(), "oci": {"digest": DIGEST}}).oci == OciRef(DIGEST)
    lab = spec.for_job("lab")
    assert (lab.kind, lab.port, lab.is_jupyter) == ("jupyter-lab", 8888, True)
    assert spec.for_job("server").kind == "jupyter-server" and spec.for_job(None) is spec
    with pytest.raises(ValidationError, match="--jupyter is for OCI images"):
        BUILTIN_IMAGES["python"].for_job("lab")
    with pytest.raises(ValidationError, match="an OCI image has no pip packages"):
        ImageSpec("nb", "python", ("six",), oci=OciRef(DIGEST))
    with pytest.raises(ValidationError, match="cannot be added"):
        spec.derive("more", "six")
    assert spec.content_hash() != ImageSpec("nb", "python", ()).content_hash()


def test_job_spec_jupyter() -> None:
    assert JobSpec(name="a", image="nb", jupyter="lab").jupyter == "lab"
    assert JobSpec(name="a", image="nb").jupyter is None
    with pytest.raises(ValueError):
        JobSpec(name="a", image="nb", jupyter="notebook")  # type: ignore[arg-type]


def test_checks_against_the_rootfs() -> None:
    bare = RootfsFacts("/usr/bin:/bin", has_sh=False)
    with pytest.raises(ValidationError) as err:
        check_script_job("tiny", bare)
    assert str(err.value) == (
        "image 'tiny' has neither /bin/sh nor python3 on its PATH (/usr/bin:/bin): "
        "a --script job needs one of them"
    )
    check_script_job("py", RootfsFacts("/usr/bin", False, {"python3": "/usr/bin/python3"}))
    check_script_job("sh", RootfsFacts("/usr/bin", True))
    server = RootfsFacts(
        "/opt/j/bin", True, {"jupyter": "/opt/j/bin/jupyter", "jupyter-server": "/x"}
    )
    assert server.jupyter_modes == ("server",)
    check_jupyter("nb", "server", server)
    with pytest.raises(ValidationError) as err:
        check_jupyter("nb", "lab", server)
    assert str(err.value) == (
        "image 'nb' has no jupyter-lab on its PATH (/opt/j/bin): --jupyter lab needs "
        "JupyterLab (jupyterlab) installed in the image"
    )
    with pytest.raises(ValidationError, match="no jupyter or jupyter-server"):
        check_jupyter("tiny", "server", bare)
    assert RootfsFacts.from_dict(server.to_dict()) == server
    nothing = OciConfig()
    with pytest.raises(ValidationError, match="has no Entrypoint or Cmd"):
        check_runnable("x", nothing, "", None)
    check_runnable("x", nothing, "print(1)", None)
    check_runnable("x", nothing, "", "lab")


@pytest.mark.parametrize(
    "ref",
    [
        "n",
        "docker://debian:12",
        "jupyter/scipy-notebook:2025-06-01",
        "127.0.0.1:5000/outgrow/pulled:2",
        "ghcr.io/org/sub/nb_env__x@sha256:" + "ab" * 32,
        "registry.example.com:443/a.b/c-d:v1.0_rc",
    ],
)
def test_registry_references_are_accepted(ref: str) -> None:
    assert check_reference(ref) == ref.removeprefix("docker://")


@pytest.mark.parametrize(
    "ref",
    ["S", "org/Img", "img:", "img:-tag", "/img", "img//x", "img@sha256:12", "a b", "", "x" * 256],
)
def test_malformed_references_are_a_validation_error(ref: str) -> None:
    with pytest.raises(ValidationError, match="repository in lowercase") as err:
        check_reference(ref)
    assert err.value.field == "reference"
