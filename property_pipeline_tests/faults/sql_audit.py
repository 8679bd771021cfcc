"""Find string-built SQL in Python source: SQL text handed to execute/text/copy that interpolates non-constants.

Allowed: string literals, module-level UPPER_CASE constants, and expressions built only from those
(`f"INSERT INTO t ({', '.join(COLUMNS)})"`). Flagged: an f-string, `+`, `%` or `.format()` that
brings in anything else (a variable, a parameter, an attribute of a runtime object), whether
passed directly or through a local variable.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# Calls whose first argument is SQL text.
SQL_SINKS = frozenset({"execute", "executemany", "executescript", "exec_driver_sql", "text", "copy", "literal_column"})


@dataclass(frozen=True)
class StringBuiltSql:
    path: str
    line: int
    call: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}({self.snippet})"


def _module_constants(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper())
    return names


def _builds_string(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


class _Auditor(ast.NodeVisitor):
    def __init__(self, path: str, source: str, constants: set[str]) -> None:
        self.path, self.source, self.constants = path, source, constants
        self.findings: list[StringBuiltSql] = []
        self.locals: list[dict[str, ast.expr]] = [{}]

    def _constant(self, node: ast.expr, bound: frozenset[str] = frozenset()) -> bool:
        """True when the expression uses only literals, module constants and names bound by its own loops."""
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.constants or node.id in bound
        if isinstance(node, ast.JoinedStr):
            return all(self._constant(part, bound) for part in node.values)
        if isinstance(node, ast.FormattedValue):
            return self._constant(node.value, bound)
        if isinstance(node, ast.Attribute):
            return self._constant(node.value, bound)
        if isinstance(node, ast.BinOp):
            return self._constant(node.left, bound) and self._constant(node.right, bound)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return all(self._constant(element, bound) for element in node.elts)
        if isinstance(node, ast.Starred):
            return self._constant(node.value, bound)
        if isinstance(node, ast.Call):
            func_ok = self._constant(node.func, bound) or (
                isinstance(node.func, ast.Name) and node.func.id in {"str", "len", "sorted", "tuple", "list"}
            )
            return func_ok and all(
                self._constant(arg, bound) for arg in [*node.args, *(k.value for k in node.keywords)]
            )
        if isinstance(node, ast.GeneratorExp | ast.ListComp):
            names = set(bound)
            for generator in node.generators:
                if not self._constant(generator.iter, frozenset(names)):
                    return False
                names.update(n.id for n in ast.walk(generator.target) if isinstance(n, ast.Name))
            return self._constant(node.elt, frozenset(names))
        return False

    def _resolve(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name):
            for scope in reversed(self.locals):
                if node.id in scope:
                    return scope[node.id]
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.locals.append({})
        self.generic_visit(node)
        self.locals.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        if len(self.locals) > 1:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.locals[-1][target.id] = node.value
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in SQL_SINKS and node.args:
            sql = self._resolve(node.args[0])
            if _builds_string(sql) and not self._constant(sql):
                snippet = (ast.get_source_segment(self.source, sql) or ast.dump(sql))[:120]
                self.findings.append(StringBuiltSql(self.path, node.lineno, name, snippet))
        self.generic_visit(node)


def audit_source(source: str, path: str = "<source>") -> list[StringBuiltSql]:
    """String-built SQL in one module's source."""
    tree = ast.parse(source)
    auditor = _Auditor(path, source, _module_constants(tree))
    auditor.visit(tree)
    return auditor.findings


def audit_package(package: Path) -> tuple[int, list[StringBuiltSql]]:
    """(modules read, findings) over every .py file under `package`."""
    findings: list[StringBuiltSql] = []
    modules = 0
    for path in sorted(package.rglob("*.py")):
        modules += 1
        findings += audit_source(path.read_text(), str(path.relative_to(package.parent)))
    return modules, findings
