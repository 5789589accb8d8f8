"""The Jinja2 sandbox newsletter templates run in, with resource limits.

Jinja2's own sandbox stops a template from reaching Python's internals, not from eating the machine:
``{{ 'x' * 300000000 }}`` allocates 300 MB, ``{{ 9 ** 9 ** 9 }}`` never returns, two nested loops over
``range(100000)`` spin for hours.  Authors are not all trusted (DESIGN §4.5), and the template is
checked when the sending is created, so these limits make such a template a clear error *there*:

- every value a template builds (an operator's result, a call's, a filter's, ``~`` and the rendered
  part itself) is at most :data:`MAX_SIZE` characters or items, checked *before* the big ones are
  built where the size is known in advance (repetition, padding, format widths, joins, replace);
- integers stay under :data:`MAX_INT_BITS` bits (``**`` and ``*`` are checked before computing);
- ``range()`` yields at most :data:`MAX_RANGE` numbers;
- one render may build :data:`MAX_PRODUCED` characters in all (:func:`budget`), so a loop cannot pile
  up big values in a list;
- the creation-time render gets :data:`CHECK_SECONDS` (:func:`time_limit`): a loop that spins is stopped.

A limit reached raises :class:`LimitExceeded` naming the limit.
"""

from __future__ import annotations

import contextvars
import functools
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from string import Formatter
from types import FrameType
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import soft_str

MAX_SIZE = 10_000_000  # characters of one value or one rendered part (a newsletter is well under 1 MB)
MAX_PRODUCED = 10 * MAX_SIZE  # characters (or items) one render may build in all
MAX_INT_BITS = 100_000  # about 30,000 digits: more than any date, price or counter
MAX_RANGE = 10_000
CHECK_SECONDS = 2.0  # the creation-time render of one template part


class LimitExceeded(SecurityError):
    """A template went past one of the limits above; the message names it."""


@dataclass
class _Budget:
    produced: int = 0


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("mailshot_template_budget", default=None)


@contextmanager
def budget() -> Iterator[None]:
    """One render: what it builds counts towards :data:`MAX_PRODUCED`."""
    token = _budget.set(_Budget())
    try:
        yield
    finally:
        _budget.reset(token)


def _size(value: Any) -> int | None:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return len(value)
    return None


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_SIZE:
        raise LimitExceeded(f"{what} would make a value of {size:,} characters; templates are limited to {MAX_SIZE:,}")


def _checked(value: Any, what: str) -> Any:
    """A value the template built: its size checked and counted in the render's budget."""
    size = _size(value)
    if size is not None:
        _refuse_size(size, what)
        current = _budget.get()
        if current is not None:
            current.produced += size
            if current.produced > MAX_PRODUCED:
                raise LimitExceeded(
                    f"the template builds more than {MAX_PRODUCED:,} characters in all (loops piling up values?)"
                )
    return value


# --- what is checked before it is built -----------------------------------------------------------------

# printf-style conversions: flags, width, precision.  A width of 10**9 pads to a gigabyte.
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")


def _percent_format(fmt: str, what: str) -> None:
    total = len(fmt)
    for width, precision in _PERCENT.findall(fmt):
        if "*" in (width, precision):
            raise LimitExceeded(f"{what}: a '*' width or precision is not allowed in templates")
        total += int(width or 0) + int(precision or 0)
    _refuse_size(total, what)


def _brace_format(fmt: str, what: str) -> None:
    total = len(fmt)
    for _, _, spec, _ in Formatter().parse(fmt):
        if spec and "{" in spec:
            raise LimitExceeded(f"{what}: nested replacement fields in a format spec are not allowed in templates")
        total += sum(int(n) for n in re.findall(r"\d+", spec or ""))
    _refuse_size(total, what)


def _binop(operator: str, left: Any, right: Any) -> None:
    what = f"the operator {operator!r}"
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if _size(seq) is not None and isinstance(n, int):
                _refuse_size(len(seq) * n, what)
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise LimitExceeded(f"{what} would make a number of more than {MAX_INT_BITS:,} bits")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        if left.bit_length() * right > MAX_INT_BITS:
            raise LimitExceeded(f"{what} would make a number of more than {MAX_INT_BITS:,} bits")
    elif operator == "+" and _size(left) is not None and _size(right) is not None:
        _refuse_size(len(left) + len(right), what)
    elif operator == "%" and isinstance(left, str):
        _percent_format(left, what)


def _joined_size(separator: str, items: list[Any]) -> int:
    return sum(len(soft_str(x)) for x in items) + len(separator) * max(len(items) - 1, 0)


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


# str methods whose result size the arguments decide: (method name) -> size before calling.
_STR_METHODS: dict[str, Callable[[str, tuple[Any, ...]], int]] = {
    "ljust": lambda s, a: max(len(s), a[0] if a and isinstance(a[0], int) else 0),
    "rjust": lambda s, a: max(len(s), a[0] if a and isinstance(a[0], int) else 0),
    "center": lambda s, a: max(len(s), a[0] if a and isinstance(a[0], int) else 0),
    "zfill": lambda s, a: max(len(s), a[0] if a and isinstance(a[0], int) else 0),
    "expandtabs": lambda s, a: len(s) + s.count("\t") * (a[0] if a and isinstance(a[0], int) else 8),
    "replace": lambda s, a: _replaced_size(s, str(a[0]), str(a[1]), a[2] if len(a) > 2 else None) if len(a) > 1 else 0,
}


def _call(obj: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Checks a call's result size before it is made; returns the arguments (a join's iterable as a list)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str):
        what = f"str.{name}()"
        if name == "join" and args:
            items = list(args[0])
            _refuse_size(_joined_size(owner, items), what)
            return (items, *args[1:])
        estimate = _STR_METHODS.get(name)
        if estimate is not None:
            _refuse_size(estimate(owner, args), what)
    for value in args:
        if isinstance(value, int) and abs(value) > MAX_SIZE:
            raise LimitExceeded(f"{name or 'a call'}(): the argument {value:,} is beyond the templates' limits")
    return args


def _filter_args(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Checks what a filter would build, from its value (args[0]) and its arguments."""
    what = f"the filter {name!r}"
    value = args[0] if args else None
    rest = [*args[1:], *kwargs.values()]
    for arg in rest:
        if isinstance(arg, int) and abs(arg) > MAX_SIZE:
            raise LimitExceeded(f"{what}: the argument {arg:,} is beyond the templates' limits")
    text = soft_str(value) if isinstance(value, str) else None
    if name == "format" and text is not None:
        _percent_format(text, what)
    elif name == "replace" and text is not None and len(args) > 2:
        count = args[3] if len(args) > 3 else kwargs.get("count")
        _refuse_size(_replaced_size(text, str(args[1]), str(args[2]), count), what)
    elif name == "indent" and text is not None:
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        pad = len(width) if isinstance(width, str) else int(width)
        _refuse_size(len(text) + pad * (text.count("\n") + 1), what)
    elif name == "wordwrap" and text is not None:
        width = args[1] if len(args) > 1 else kwargs.get("width", 79)
        wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring")
        lines = len(text) // max(int(width), 1) + text.count("\n") + 1
        _refuse_size(len(text) + lines * len(str(wrap or "\n")), what)


def _limited_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    # A filter marked pass_context / pass_eval_context / pass_environment gets that object first.
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)  # keeps jinja_pass_arg, so Jinja2 still passes what the filter asks for
    def run(*args: Any, **kwargs: Any) -> Any:
        head, values = list(args[:skip]), list(args[skip:])
        if name == "join" and values:
            values[0] = list(values[0])
            separator = values[1] if len(values) > 1 else kwargs.get("d", "")
            _refuse_size(_joined_size(str(separator), values[0]), f"the filter {name!r}")
        _filter_args(name, values, kwargs)
        return _checked(function(*head, *values, **kwargs), f"the filter {name!r}")

    return run


def limited_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise LimitExceeded(f"range() of {len(numbers):,} numbers; templates are limited to {MAX_RANGE:,}")
    return numbers


class _CodeGenerator(CodeGenerator):
    """Jinja2's code generator, with ``~`` (string concatenation) going through the size check: Jinja2
    compiles it to a join that no environment hook sees."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.limited_join({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with the limits of this module, failing loudly on unsafe attributes.

    The stock sandbox turns ``{{ ''.__class__ }}`` into an Undefined that prints as an empty string, so
    the probe went unnoticed; raising makes the creation-time check refuse the template.
    """

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = limited_range
        self.globals.pop("lipsum", None)  # lipsum(n=...) builds as much text as asked, and no newsletter needs it
        self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _binop(operator, left, right)
        return _checked(super().call_binop(context, operator, left, right), f"the operator {operator!r}")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # Jinja2 names them so
        args = _call(__obj, args)
        result = super().call(__context, __obj, *args, **kwargs)
        return _checked(result, f"{getattr(__obj, '__name__', 'a call')}()")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _brace_format(value.__self__, f"str.{value.__name__}()")
        return wrapped

    def limited_join(self, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        """``a ~ b``: the parts' total size is checked before they are joined."""
        texts = [soft_str(p) for p in parts]
        _refuse_size(sum(len(t) for t in texts), "the operator '~'")
        return str(_checked(join(texts), "the operator '~'"))

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        """Every rendered output (a part, a ``{% set %}`` block, a macro's result), counted as it is
        produced: a loop writing big chunks stops at the limit instead of filling the memory."""
        kept: list[str] = []
        size = 0
        for part in parts:
            size += len(part)
            _refuse_size(size, "the rendered text")
            kept.append(part)
        return str(_checked("".join(kept), "the rendered text"))


@contextmanager
def time_limit(seconds: float = CHECK_SECONDS) -> Iterator[None]:
    """Stops a render running longer than ``seconds`` (the creation-time check only: tracing slows the
    template's own code, which does not matter for one render).

    A trace function sees each line the template's compiled code runs, loop iterations included, and
    raises in it once the time is up; library code is not traced line by line (its loops are bounded
    by the size limits).
    """
    deadline = time.monotonic() + seconds

    def lines(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise LimitExceeded(f"rendering took more than {seconds:g} s (a loop that runs too long?)")
        return lines

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise LimitExceeded(f"rendering took more than {seconds:g} s (a loop that runs too long?)")
        return lines if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield
    finally:
        sys.settrace(previous)
