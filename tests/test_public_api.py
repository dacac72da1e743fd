"""The public names: every public module says what it exports (``__all__``), exports only what
exists, documents each exported function and class, and lets nothing private show through
(a helper of another module, an import of another library's function or class).

Public modules are those a user imports: fastloss and its submodules without a leading
underscore (fastloss.torch when PyTorch is installed). The benchmark subpackage is the
``bench`` command's implementation and is not covered here.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types

import pytest

import fastloss

PUBLIC_MODULES = ["fastloss", "fastloss.functional", "fastloss.reference", "fastloss.nn",
                  "fastloss.nn.layers", "fastloss.nn.losses", "fastloss.optim", "fastloss.data",
                  "fastloss.training", "fastloss.torch"]
# Names a module may hold for its own annotations and code without exporting them.
ANNOTATION_MODULES = {"typing", "collections.abc", "types", "__future__", "numbers"}


def _module(name):
    if name == "fastloss.torch":
        pytest.importorskip("torch")
    return importlib.import_module(name)


def _exported_objects():
    """id -> name of every object some public module exports."""
    exported = {}
    for name in PUBLIC_MODULES:
        if name == "fastloss.torch" and importlib.util.find_spec("torch") is None:
            continue
        module = importlib.import_module(name)
        for public in module.__all__:
            exported[id(getattr(module, public))] = f"{name}.{public}"
    return exported


def _defined_in_fastloss(value):
    return (getattr(value, "__module__", None) or "").split(".")[0] == "fastloss"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_what_exists(name):
    module = _module(name)
    assert isinstance(module.__all__, list) and len(set(module.__all__)) == len(module.__all__)
    for public in module.__all__:
        assert not public.startswith("_"), f"{name}.__all__ lists the private {public}"
        getattr(module, public)  # fit and predict of fastloss.nn load on first use


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_nothing_private_shows_through(name):
    """Every public name of the module that is not in ``__all__`` is a module (a submodule, or
    a library such as numpy), an annotation helper (typing, collections.abc), or an object
    another public module exports (nn.Dense seen from fastloss.training)."""
    module = _module(name)
    exported = _exported_objects()
    leaks = []
    for public in dir(module):
        if public.startswith("_") or public in module.__all__:
            continue
        value = getattr(module, public)
        if isinstance(value, types.ModuleType) or id(value) in exported:
            continue
        origin = getattr(value, "__module__", None) or type(value).__module__
        if not _defined_in_fastloss(value) and origin in ANNOTATION_MODULES:
            continue
        leaks.append(f"{public} ({origin})")
    assert leaks == [], f"{name} shows names that are neither exported nor private: {leaks}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_export_is_documented(name):
    """Each exported function and class has a docstring of its own (not inherited), and each
    public method of an exported class has one too or overrides a documented one."""
    module = _module(name)
    assert module.__doc__ and module.__doc__.strip()
    for public in module.__all__:
        value = getattr(module, public)
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        assert value.__doc__ and value.__doc__.strip(), f"{name}.{public} has no docstring"
        if inspect.isclass(value):
            for method_name, method in vars(value).items():
                if method_name.startswith("_") or not inspect.isfunction(method):
                    continue
                documented = inspect.getdoc(getattr(value, method_name))
                assert documented, f"{name}.{public}.{method_name} has no docstring"


FUNCTION_ARGUMENTS = {
    "input", "target", "weight", "pos_weight", "reduction", "grad_output", "out", "output", "dim",
    "ignore_index", "label_smoothing"}


@pytest.mark.parametrize("public", fastloss.functional.__all__)
def test_each_function_documents_its_own_arguments(public):
    """Each public function's docstring has Args, Returns and Raises sections of its own that
    name every argument it takes and no other (no shared block that talks about pos_weight
    inside mse_loss)."""
    function = getattr(fastloss, public)
    doc = inspect.getdoc(function)
    for section in ("Args:", "Returns:", "Raises:"):
        assert section in doc, f"{public}: no {section} section"
    args = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
    documented = {word for line in args.splitlines()
                  if re.match(r"^    \w", line)
                  for word in re.findall(r"\w+", line.split(":", 1)[0])}
    taken = set(inspect.signature(function).parameters)
    assert taken <= FUNCTION_ARGUMENTS
    assert documented == taken, f"{public}: Args name {sorted(documented)}, takes {sorted(taken)}"


def test_dense_documents_the_shapes_of_forward_and_backward():
    from fastloss import nn
    for method in (nn.Dense.forward, nn.Dense.backward):
        doc = inspect.getdoc(method)
        assert "(batch, in_features)" in doc and "(batch, out_features)" in doc
