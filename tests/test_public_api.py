"""The public surface: exact ``__all__`` lists, docstrings and the exception tree."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
from pathlib import Path
from types import GenericAlias, ModuleType

import pytest

import dicomweb_async
import dicomweb_async.distributed
import dicomweb_async.testing
from dicomweb_async._core import exceptions as _exceptions

PUBLIC_MODULES = ["dicomweb_async", "dicomweb_async.distributed", "dicomweb_async.testing"]


def _defined_names(module: ModuleType) -> set[str]:
    """Names bound at the top level of the module's source (imports and assignments)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))  # type: ignore[arg-type]
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    names.discard("__all__")
    return names


def _public(name: str) -> bool:
    return not name.startswith("_")


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_matches_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    assert all(isinstance(name, str) for name in exported)

    # Everything promised exists.
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []

    # Everything public that the module itself defines or imports is promised.
    defined = {n for n in _defined_names(module) if _public(n)}
    assert defined - set(exported) == set()
    assert {n for n in exported if _public(n)} == defined

    # Nothing public is in the namespace without being promised (submodules aside).
    extra = {
        name
        for name, value in vars(module).items()
        if _public(name) and not isinstance(value, ModuleType) and name != "annotations"
    }
    assert extra - set(exported) == set()


def test_version_is_exported() -> None:
    assert "__version__" in dicomweb_async.__all__
    assert isinstance(dicomweb_async.__version__, str)
    assert dicomweb_async.__version__


def _exported_objects() -> list[tuple[str, object]]:
    found = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            found.append((f"{module_name}.{name}", getattr(module, name)))
    return found


@pytest.mark.parametrize(
    ("qualname", "obj"),
    [
        pytest.param(q, o, id=q)
        for q, o in _exported_objects()
        # Python 3.10 counts aliases such as Callable[[], str] as classes.
        if (inspect.isclass(o) and not isinstance(o, GenericAlias)) or inspect.isfunction(o)
    ],
)
def test_public_objects_have_docstrings(qualname: str, obj: object) -> None:
    doc = obj.__doc__
    assert doc is not None, f"{qualname} has no docstring"
    assert doc.strip(), f"{qualname} has an empty docstring"
    if inspect.isclass(obj):
        # The class's own docstring, not one inherited from a base class.
        assert "__doc__" in vars(obj) and vars(obj)["__doc__"], qualname


def test_private_implementation_modules() -> None:
    for name in dir(dicomweb_async):
        value = getattr(dicomweb_async, name)
        if isinstance(value, ModuleType) and name not in {"distributed", "testing"}:
            assert name.startswith("_"), f"implementation module {name} should be private"


# -- exceptions -------------------------------------------------------------------------------

EXCEPTIONS = [
    (name, obj)
    for name, obj in vars(dicomweb_async).items()
    if inspect.isclass(obj) and issubclass(obj, BaseException)
]


def test_exceptions_are_all_exported() -> None:
    # Defined in the module's source: __module__ names the public package instead.
    source = ast.parse(Path(_exceptions.__file__).read_text(encoding="utf-8"))
    classes = {node.name for node in source.body if isinstance(node, ast.ClassDef)}
    from_module = {
        name
        for name, obj in vars(_exceptions).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and name in classes
    }
    assert from_module
    assert from_module <= set(dicomweb_async.__all__)
    assert {name for name, _ in EXCEPTIONS} == from_module


@pytest.mark.parametrize(("name", "cls"), EXCEPTIONS, ids=[n for n, _ in EXCEPTIONS])
def test_every_exception_derives_from_dicomweb_error(name: str, cls: type) -> None:
    assert issubclass(cls, dicomweb_async.DICOMwebError)
    assert issubclass(cls, Exception)


EXPECTED_PARENTS = {
    "DICOMwebError": Exception,
    "TransportError": "DICOMwebError",
    "TimeoutError": "TransportError",
    "ProtocolError": "DICOMwebError",
    "MultipartError": "ProtocolError",
    "HTTPStatusError": "DICOMwebError",
    "AuthenticationError": "HTTPStatusError",
    "PermissionDeniedError": "HTTPStatusError",
    "NotFoundError": "HTTPStatusError",
    "MethodNotAllowedError": "HTTPStatusError",
    "NotAcceptableError": "HTTPStatusError",
    "ConflictError": "HTTPStatusError",
    "ServerError": "HTTPStatusError",
    "StoreFailedError": "DICOMwebError",
    "BulkTransferError": "DICOMwebError",
}


@pytest.mark.parametrize(("name", "parent"), EXPECTED_PARENTS.items())
def test_exception_tree(name: str, parent: str | type) -> None:
    cls = getattr(dicomweb_async, name)
    expected = parent if isinstance(parent, type) else getattr(dicomweb_async, parent)
    assert cls.__bases__ == (expected,)


def test_exception_tree_is_complete() -> None:
    assert {name for name, _ in EXCEPTIONS} == set(EXPECTED_PARENTS)


def test_timeout_error_is_the_librarys_own() -> None:
    assert dicomweb_async.TimeoutError is not builtins.TimeoutError
    assert issubclass(dicomweb_async.TimeoutError, dicomweb_async.TransportError)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (405, "MethodNotAllowedError"),
        (406, "NotAcceptableError"),
        (409, "ConflictError"),
        (500, "ServerError"),
        (502, "ServerError"),
        (503, "ServerError"),
        (599, "ServerError"),
        (400, "HTTPStatusError"),
        (418, "HTTPStatusError"),
        (429, "HTTPStatusError"),
    ],
)
def test_status_error_class(status: int, expected: str) -> None:
    cls = _exceptions.status_error_class(status)
    assert cls is getattr(dicomweb_async, expected)
    error = cls("failed", status_code=status, method="GET", url="http://h/studies")
    assert isinstance(error, dicomweb_async.HTTPStatusError)
    assert error.status_code == status
    assert str(status) in str(error)
    assert "GET http://h/studies" in str(error)


def test_multipart_error_message_names_place() -> None:
    error = dicomweb_async.MultipartError("cut short", part_index=3, offset=1234)
    assert error.part_index == 3
    assert error.offset == 1234
    assert str(error) == "cut short at part 3, byte offset 1234"
    assert str(dicomweb_async.MultipartError("plain")) == "plain"


def test_store_failed_error_carries_result() -> None:
    result = object()
    error = dicomweb_async.StoreFailedError("nope", result=result)  # type: ignore[arg-type]
    assert error.result is result
    assert isinstance(error, dicomweb_async.DICOMwebError)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_classes_and_functions_name_the_public_module(module_name: str) -> None:
    # Reprs, tracebacks and pickles show dicomweb_async.X, wherever X is defined.
    module = importlib.import_module(module_name)
    shown = {
        name: getattr(module, name).__module__
        for name in module.__all__
        if issubclass(type(getattr(module, name)), type)
        or inspect.isfunction(getattr(module, name))
    }
    assert shown
    assert {name: where for name, where in shown.items() if where != module_name} == {}


def test_public_objects_pickle_by_their_public_name() -> None:
    import pickle

    error = dicomweb_async.ProtocolError("bad body", method="GET", url="http://127.0.0.1/x")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is dicomweb_async.ProtocolError
    assert str(again) == str(error)
    assert b"dicomweb_async._core" not in pickle.dumps(error)
    assert repr(dicomweb_async.RetryPolicy).startswith("<class 'dicomweb_async.RetryPolicy'")
