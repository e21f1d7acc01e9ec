import maquette


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert maquette.__all__ == sorted(maquette.__all__)
    for name in maquette.__all__:
        assert getattr(maquette, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        maquette.nope  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
