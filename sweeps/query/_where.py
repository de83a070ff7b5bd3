"""Filtering, sorting and column choice over a trials frame, for ``--where``/``--sort``/``--columns``.

A where expression is parsed with ``ast`` and evaluated here, column by column; nothing reaches
``eval`` or ``DataFrame.query`` (which would run ``@variables``, attribute access and calls).
The grammar, and nothing else::

    expr    := expr and expr | expr or expr | not expr | (expr) | compare | COLUMN (true/false column)
    compare := operand OP operand [OP operand ...]     OP: == != < <= > >= in, not in
    operand := COLUMN | NUMBER | -NUMBER | 'STRING' | true | false | [literal, ...]
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError

if TYPE_CHECKING:
    import pandas as pd

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.In: "in", ast.NotIn: "not in"}
_WORDS = {"true": True, "false": False, "True": True, "False": False}


def where(frame: pd.DataFrame, expression: str | None) -> pd.DataFrame:
    """The rows of ``frame`` where ``expression`` holds; ConfigError on a malformed one or an unknown column."""
    if expression is None or not expression.strip():
        return frame
    tree = _parse(expression)
    mask = _Evaluator(frame, expression).boolean(tree.body)
    return frame[mask.to_numpy()]


def sort(frame: pd.DataFrame, keys: str | Sequence[str] | None) -> pd.DataFrame:
    """``frame`` sorted by comma-separated keys; ``-key`` sorts descending; missing values go last."""
    names = split_names(keys)
    if not names:
        return frame
    columns = [name.lstrip("-+") for name in names]
    check_columns(frame, columns, "sort key")
    return frame.sort_values(columns, ascending=[not name.startswith("-") for name in names],
                             na_position="last", kind="stable")


def select(frame: pd.DataFrame, columns: str | Sequence[str] | None) -> pd.DataFrame:
    """Only the named (comma-separated) columns, in that order."""
    names = split_names(columns)
    if not names:
        return frame
    check_columns(frame, names, "column")
    return frame[names]


def check_columns(frame: pd.DataFrame, names: Sequence[str], what: str = "column") -> None:
    unknown = [name for name in names if name not in frame.columns]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(repr(n) for n in unknown)} "
                          f"(columns: {', '.join(map(str, frame.columns))})")


def split_names(names: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` as a list of names."""
    if names is None:
        return []
    parts = [names] if isinstance(names, str) else list(names)
    return [piece.strip() for part in parts for piece in part.split(",") if piece.strip()]


def _parse(expression: str) -> ast.Expression:
    # A where clause is one line: newlines would only let a second statement hide in it.
    text = " ".join(expression.split())
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as error:
        at = f" at character {error.offset}" if error.offset else ""
        raise ConfigError(f"malformed where expression {expression!r}{at}: {error.msg} "
                          "(example: \"retention > 0.95 and student_params < 20000\")") from None
    except (ValueError, RecursionError, MemoryError) as error:  # NUL bytes, absurd nesting
        raise ConfigError(f"malformed where expression {expression!r}: {type(error).__name__}") from None


class _Evaluator:
    """Evaluates an allowed expression tree to a boolean Series over ``frame``."""

    def __init__(self, frame: pd.DataFrame, expression: str) -> None:
        self.frame = frame
        self.expression = expression

    def reject(self, node: ast.AST, why: str) -> ConfigError:
        piece = ast.get_source_segment(" ".join(self.expression.split()), node) or type(node).__name__
        return ConfigError(f"where expression {self.expression!r}: {why}: {piece!r} (allowed: column names, "
                           "numbers, 'strings', comparisons == != < <= > >= in, and/or/not, parentheses)")

    def boolean(self, node: ast.AST) -> pd.Series:
        import pandas as pd

        if isinstance(node, ast.BoolOp):
            parts = [self.boolean(value) for value in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = parts[0]
            for part in parts[1:]:
                result = combine(result, part)
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.boolean(node.operand)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Name) and node.id not in _WORDS:
            column = self.column(node)
            if not pd.api.types.is_bool_dtype(column.dtype):
                raise self.reject(node, "this column is not true/false; compare it with a value")
            return column.fillna(False).astype(bool)
        raise self.reject(node, "not a condition")

    def compare(self, node: ast.Compare) -> pd.Series:
        import pandas as pd

        result = pd.Series(True, index=self.frame.index)
        left = self.operand(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.operand(right_node)
            try:
                if isinstance(op, (ast.In, ast.NotIn)):
                    part = self.membership(left, right, right_node)
                    part = ~part if isinstance(op, ast.NotIn) else part
                elif type(op) in _COMPARE:
                    part = _COMPARE[type(op)](left, right)
                else:
                    raise self.reject(node, f"operator {type(op).__name__} is not allowed")
            except TypeError:
                raise self.reject(node, f"cannot compare these with {_SYMBOL.get(type(op), '?')}") from None
            if not isinstance(part, pd.Series):  # two literals: a constant condition
                part = pd.Series(bool(part), index=self.frame.index)
            result &= part.fillna(False).astype(bool)
            left = right
        return result

    def membership(self, left: Any, right: Any, right_node: ast.AST) -> pd.Series:
        import pandas as pd

        if not isinstance(right, list):
            raise self.reject(right_node, "'in' needs a list such as ['COMPLETE', 'PRUNED']")
        if not isinstance(left, pd.Series):
            return pd.Series(left in right, index=self.frame.index)
        return left.isin(right)

    def operand(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return _WORDS[node.id] if node.id in _WORDS else self.column(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
                and not isinstance(node.operand.value, bool)):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [self.operand(element) for element in node.elts]
            if any(not isinstance(v, (int, float, str, bool)) for v in values):
                raise self.reject(node, "a list may hold only numbers and strings")
            return values
        raise self.reject(node, "not a column name, number or string")

    def column(self, node: ast.Name) -> pd.Series:
        if node.id not in self.frame.columns:
            raise ConfigError(f"unknown column {node.id!r} in where expression {self.expression!r} "
                              f"(columns: {', '.join(map(str, self.frame.columns))})")
        return self.frame[node.id]
