"""The public API is exactly ``collabinfer.__all__``, and the docstring example runs."""

from __future__ import annotations

import doctest
import types

import collabinfer


def test_all_names_exist_and_nothing_else_is_public() -> None:
    for name in collabinfer.__all__:
        assert hasattr(collabinfer, name), name
    public = {
        n
        for n, v in vars(collabinfer).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(collabinfer.__all__) - {"__version__"}


def test_errors_form_one_tree() -> None:
    for name in collabinfer.__all__:
        obj = getattr(collabinfer, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, collabinfer.CollabInferError), name
    assert issubclass(collabinfer.LinkTimeout, collabinfer.LinkError)
    assert issubclass(collabinfer.CheckpointError, collabinfer.ModelError)


def test_package_docstring_example_runs() -> None:
    result = doctest.testmod(collabinfer, verbose=False)
    assert result.attempted > 0 and result.failed == 0
