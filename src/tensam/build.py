"""One path from a config node to an object, for every group (task, model, optimizer and its
base, scheduler, logger).

A node names a callable in ``_target_`` and its other keys are that callable's arguments, as in
Hydra's ``instantiate``. :func:`build`

* refuses, in one line naming the key, a key that is not an argument of the target (a typo never
  trains a default), a value not of the argument's annotated type, and a non-finite number;
* passes the run's objects (``params``, ``base``, ``groups``, ``total_steps``, the task's model
  inputs, ...) to the arguments of those names, so a YAML file holds only configuration;
* builds a nested node first: with ``_partial_: true`` (an adapter, which the model applies to
  each of its target layers) as ``functools.partial`` of its checked arguments, else called;
* turns a ``ValueError`` of a callable outside tensam (``torch.optim.SGD(lr=-1)``) into a
  :class:`~tensam.errors.ConfigError`; tensam's own constructors raise ``ConfigError`` for the
  values they refuse, and any other exception is a bug that keeps its traceback.

**Defaults live in the signatures.** A YAML value ``${sig:}`` is the default of that argument in
the target's signature (the resolver is registered when tensam is imported), so a config lists
every argument a user may override without restating its default; a value written in a YAML file
is that config's own choice (``asam.yaml``'s rho 0.5, ``torch/sgd.yaml``'s lr 0.1).
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import OmegaConf

from tensam.errors import ConfigError

#: Hydra's own keys of a node
SPECIAL = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def target_of(node: Mapping, key: str):
    """The callable ``node['_target_']`` names; a missing or unknown one names ``key``."""
    target = node.get("_target_")
    if not isinstance(target, str):
        raise ConfigError(f"{key}._target_ is missing: a '{key}' config names the class it "
                          "builds, e.g. _target_: tensam.optim.DAS")
    try:
        return get_object(target)
    except Exception as err:  # noqa: BLE001 - hydra raises ImportError or its own kinds
        raise ConfigError(f"{key}._target_={target!r} cannot be imported "
                          f"({str(err).splitlines()[0]})") from None


def parameters(target) -> dict[str, inspect.Parameter]:
    """The named parameters of a callable (a class: of its constructor)."""
    return dict(inspect.signature(target).parameters)


def accepts_any(params: Mapping[str, inspect.Parameter]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _finite(key: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _finite(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _finite(key, v)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be finite (not nan or inf)")


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits an annotation: exactly for bool, int, float, str, None and unions
    of them; any other annotation (``Sequence[int]``, ``Tensor``, ...) takes a list or a mapping
    but no single number or string (``Any``: anything)."""
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    return hint is Any or not isinstance(value, (bool, int, float, str, type(None)))


def _hints(target) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: not checked
        return {}


def check(node: Mapping, key: str, provided: tuple[str, ...] = ()) -> dict:
    """The arguments ``node`` gives its target, checked: each one an argument of the target
    that the run does not provide itself, and every number finite."""
    target = target_of(node, key)
    params = parameters(target)
    args = {k: v for k, v in node.items() if k not in SPECIAL}
    own = [n for n in params if n not in provided and params[n].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for name in args:
        if name in provided:
            raise ConfigError(f"{key}.{name} is given by the run, not by the config "
                              f"({node['_target_']} gets it when it is built)")
        if name not in params and not accepts_any(params):
            raise ConfigError(f"{key}.{name} is not an argument of {node['_target_']}; "
                              f"allowed: {own}")
    hints = _hints(target)
    for name, value in args.items():
        _finite(f"{key}.{name}", value)
        if name in hints and not _type_ok(value, hints[name]):
            raise ConfigError(f"{key}.{name}={value!r} is not of type "
                              f"{getattr(hints[name], '__name__', hints[name])}")
    return args


def build(node: Mapping, key: str, **run: Any):
    """``node['_target_'](**node's arguments, **the run objects its signature names)``."""
    node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    args = check(node, key, provided=tuple(run))
    args = {k: _nested(v, f"{key}.{k}") if isinstance(v, Mapping) and "_target_" in v else v
            for k, v in args.items()}  # nested nodes (a task's data set, an adapter) first
    target = target_of(node, key)
    params = parameters(target)
    given = {k: v for k, v in run.items() if k in params or accepts_any(params)}
    if not node["_target_"].startswith("tensam."):
        try:
            return target(**args, **given)
        except ValueError as err:  # a third-party constructor refusing a value
            raise ConfigError(f"{key} ({node['_target_']}): {err}") from None
    return target(**args, **given)


def _nested(node: Mapping, key: str):
    """A nested node: built, or with ``_partial_: true`` its target with the checked arguments
    bound (``functools.partial``), for its parent to call."""
    if node.get("_partial_"):
        return functools.partial(target_of(node, key), **check(node, key))
    return build(node, key)


def _signature_default(*, _node_, _parent_):
    """``${sig:}``: the default, in the signature of the node's ``_target_``, of the argument
    this key names."""
    name = _node_._key()
    where = _parent_._get_full_key(None) or "<root>"
    target = target_of({"_target_": _parent_._get_node("_target_")._value()}, where)
    param = parameters(target).get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise ConfigError(f"{where}.{name}: ${{sig:}} but {name!r} has no default in the "
                          f"signature of {_parent_._get_node('_target_')._value()}")
    default = param.default
    return OmegaConf.create(list(default)) if isinstance(default, (tuple, list)) else default


if not OmegaConf.has_resolver("sig"):
    OmegaConf.register_new_resolver("sig", _signature_default)
