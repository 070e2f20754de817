"""ImageSpec hashing/deriving and pip-spec parsing (no builds here)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from outgrow.domain import images
from outgrow.domain.images import BUILTIN_IMAGES, ImageSpec, parse_pip_spec
from outgrow.errors import ValidationError


@pytest.fixture(params=["packaging", "regex"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run parser tests with `packaging` and with the strict regex fallback."""
    if request.param == "regex":
        monkeypatch.setattr(images, "_HAVE_PACKAGING", False)
    else:
        assert images._HAVE_PACKAGING, "packaging is in requirements.lock and must be used"
    yield request.param


def spec(*pip: str, kind: images.ImageKind = "python", name: str = "img") -> ImageSpec:
    return ImageSpec(name=name, kind=kind, pip=pip)


# -- content_hash ------------------------------------------------------------------------------


def test_hash_is_16_hex_and_stable() -> None:
    h = spec("six==1.16.0", "numpy==2.4.6").content_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h == spec("six==1.16.0", "numpy==2.4.6").content_hash()
    # pinned value: changing the hash recipe silently invalidates every cache on every host
    assert spec("six==1.16.0").content_hash("3.11", "x86_64") == "85a6ce875efc61d6"


def test_hash_ignores_order_name_description_docs() -> None:
    a = ImageSpec("a", "python", ("numpy==2.4.6", "pandas==3.1.1"), "one", "# one", None)
    b = ImageSpec("b", "python", ("pandas==3.1.1", "numpy==2.4.6"), "two", "# two", 1234)
    assert a.content_hash() == b.content_hash()


def test_hash_ignores_spelling_of_names_and_specifiers(parser: str) -> None:
    base = spec("jupyter-server==2.21.1", "pandas[sql,excel]>=2,<3").content_hash()
    assert spec("Jupyter_Server == 2.21.1", "pandas[excel,sql]<3,>=2").content_hash() == base
    text = "jupyter.server==2.21.1 pandas[excel, sql] >=2, <3"
    assert spec(*parse_pip_spec(text)).content_hash() == base


def test_hash_same_with_and_without_packaging(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Jupyter_Server==2.21.1 pandas[sql,excel]>=2,<3 numpy"
    with_packaging = spec(*parse_pip_spec(text)).content_hash()
    monkeypatch.setattr(images, "_HAVE_PACKAGING", False)
    assert spec(*parse_pip_spec(text)).content_hash() == with_packaging


def test_hash_changes_with_versions_packages_kind_and_interpreter() -> None:
    base = spec("numpy==2.4.6", "pandas==3.1.1")
    h = base.content_hash()
    assert spec("numpy==2.4.5", "pandas==3.1.1").content_hash() != h
    assert spec("numpy==2.4.6").content_hash() != h
    assert spec("numpy==2.4.6", "pandas==3.1.1", "six").content_hash() != h
    assert spec("numpy==2.4.6", "pandas==3.1.1", kind="jupyter-server").content_hash() != h
    assert base.content_hash("3.99") != h
    assert base.content_hash(None, "riscv64") != h


# -- ImageSpec validation and derive --------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "A", "-x", "x_y", "a" * 41, "nyc pandas"])
def test_bad_image_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError) as ei:
        spec(name=name)
    assert ei.value.field == "name"


def test_good_image_names_and_bad_kind_or_pip() -> None:
    assert spec(name="nyc-pandas").name == "nyc-pandas"
    assert spec(name="a" * 40).name == "a" * 40
    with pytest.raises(ValidationError, match="kind"):
        ImageSpec("x", "conda", ())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="-e"):
        spec("-e .")
    with pytest.raises(ValidationError, match="pip"):
        ImageSpec("x", "python", "six")  # type: ignore[arg-type]


def test_derive_keeps_kind_and_port_and_appends_pip() -> None:
    base = BUILTIN_IMAGES["jupyter-lab"]
    d = base.derive("nyc-pandas", ["pyarrow>=15", "scikit-learn"], "NYC taxi analysis")
    assert (d.name, d.kind, d.default_port, d.description) == (
        "nyc-pandas",
        "jupyter-lab",
        8888,
        "NYC taxi analysis",
    )
    assert d.pip == (*base.pip, "pyarrow>=15", "scikit-learn")
    assert d.content_hash() != base.content_hash()
    assert "jupyter-lab" in d.docs
    assert base.derive("x", []).content_hash() == base.content_hash()


def test_derive_from_text_and_overrides() -> None:
    base = BUILTIN_IMAGES["jupyter-lab"]
    d = base.derive("nyc-pandas", "pandas pyarrow")  # the CLI's --pip string
    assert d.pip == (*base.pip, "pyarrow")  # bare 'pandas' keeps the base's pin
    assert d.description  # a default description is generated
    d2 = base.derive("old-pandas", ["pandas==2.2.3"])
    assert "pandas==2.2.3" in d2.pip and "pandas==3.1.1" not in d2.pip
    with pytest.raises(ValidationError, match="'foo=='"):
        base.derive("bad", ["foo=="])
    with pytest.raises(ValidationError):
        base.derive("Bad Name", ["six"])


def test_builtin_images() -> None:
    assert set(BUILTIN_IMAGES) == {
        "jupyter-lab",
        "jupyter-server",
        "python",
        "jupyterhub-singleuser",
    }
    lab, server, py = (BUILTIN_IMAGES[k] for k in ("jupyter-lab", "jupyter-server", "python"))
    assert (lab.kind, server.kind, py.kind) == ("jupyter-lab", "jupyter-server", "python")
    assert (lab.default_port, server.default_port, py.default_port) == (8888, 8888, None)
    assert "jupyterlab==4.6.6" in lab.pip and "jupyterlab==4.6.6" not in server.pip
    assert set(py.pip) == {"numpy==2.4.6", "pandas==3.1.1"}
    for s in (lab, server):
        assert {"jupyter_server==2.21.1", "ipykernel==7.4.0", "pandas==3.1.1"} <= set(s.pip)
    for s in BUILTIN_IMAGES.values():
        assert all("==" in p for p in s.pip), "built-in images must be fully pinned"
        assert s.description and s.docs.startswith("#")
    assert "--gateway-url=" in server.docs and "GatewayClient.auth_token" in server.docs
    assert "token" in lab.docs and "workspace" in lab.docs and "--base" in lab.docs
    assert "stdout" in py.docs
    hub = BUILTIN_IMAGES["jupyterhub-singleuser"]
    assert (hub.kind, hub.default_port, hub.is_jupyter) == ("jupyterhub-singleuser", 8888, True)
    # pinned to the JupyterHub the spawner is tested with (the `hub` extra)
    assert {"jupyterhub==6.1.1", "jupyterlab==4.6.6", "jupyter_server==2.21.1"} <= set(hub.pip)
    assert "docs/jupyterhub.md" in hub.docs
    assert len({s.content_hash() for s in BUILTIN_IMAGES.values()}) == 4


# -- parse_pip_spec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("pandas pyarrow>=15", ["pandas", "pyarrow"]),
        ("pandas\npyarrow>=15\n", ["pandas", "pyarrow"]),
        ("pandas, pyarrow>=15", ["pandas", "pyarrow"]),
        ("pandas>=2,<3", ["pandas"]),
        ("pandas >= 2, <3  numpy", ["pandas", "numpy"]),
        ("pandas[sql, excel]>=2", ["pandas"]),
        ("a b==1", ["a", "b"]),
        ("# a comment\nsix==1.16.0  # pinned\n", ["six"]),
        ("six six", ["six"]),
        ('foo; python_version >= "3.8"', ["foo"]),
        ("", []),
    ],
)
def test_parse_pip_spec_accepts(parser: str, text: str, names: list[str]) -> None:
    out = parse_pip_spec(text)
    assert [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in out] == names  # type: ignore[union-attr]


def test_parse_pip_spec_keeps_specifiers(parser: str) -> None:
    assert parse_pip_spec("a b==1") == ("a", "b==1")
    (req,) = parse_pip_spec("pandas >= 2, <3")
    assert set(req.removeprefix("pandas").split(",")) == {">=2", "<3"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("-e .", "-e ."),
        ("pandas --index-url https://example.org/simple", "--index-url"),
        ("-r requirements.txt", "-r"),
        ("http://x", "http://x"),
        ("pkg @ https://example.org/pkg.whl", "pkg @ https://example.org/pkg.whl"),
        ("./mypkg", "./mypkg"),
        ("/abs/path/pkg.whl", "/abs/path/pkg.whl"),
        ("~/pkg", "~/pkg"),
        ("foo==", "foo=="),
        ("pandas foo==", "foo=="),
        ("foo=1", "foo=1"),
        ("pandas>=2 <3", "pandas>=2 <3"),
        ("_foo", "_foo"),
        ("foo[", "foo["),
        ("six==1.16.0\nnumpy==", "numpy=="),
    ],
)
def test_parse_pip_spec_rejects_naming_the_entry(parser: str, text: str, named: str) -> None:
    with pytest.raises(ValidationError) as ei:
        parse_pip_spec(text)
    assert repr(named) in str(ei.value)
    assert ei.value.field == "pip"
    assert "\n" not in str(ei.value)
