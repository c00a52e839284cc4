"""Dagster `Config` fields derived from interp's config dataclasses, so that each default, and the reason for it,
is written once (in interp/) and a run-config key is the dataclass field's name.

    TranscoderTrainConfig = pydantic.create_model(
        "TranscoderTrainConfig", __base__=AssetOnlyFields, **fields_of(TrainConfig, exclude=("device",))
    )

A field's description (shown in the Dagster UI) is its attribute docstring: the string literal right below it.
Unknown keys stay errors: Dagster checks run config against the fields of the class.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Collection
from typing import Any

import pydantic


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a class, by field name."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def fields_of(
    cls: type, only: Collection[str] | None = None, exclude: Collection[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """The fields of dataclass `cls` (those in `only`, less those in `exclude`) as pydantic.create_model arguments:
    name -> (type, Field(default, description))."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = (set(only or ()) | set(exclude)) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}.")
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    out = {}
    for name, f in fields.items():
        if (only is not None and name not in only) or name in exclude:
            continue
        if f.default is dataclasses.MISSING:
            raise ValueError(
                f"{cls.__name__}.{name} has no plain default, so it cannot be a Dagster config field."
            )
        out[name] = (hints[name], pydantic.Field(default=f.default, description=docs.get(name)))
    return out
