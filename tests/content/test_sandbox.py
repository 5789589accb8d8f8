"""Template resource limits (mailshot_core.content.sandbox): a runaway template is refused when the sending
is created, with an error naming the limit, and ordinary templates are not affected."""

from __future__ import annotations

import pytest

from mailshot_core.content.render import CompiledMailshot, Personalisation, TemplateError
from mailshot_core.content.sandbox import MAX_RANGE, MAX_SIZE, LimitedSandbox, LimitExceeded, budget, time_limit

RUNAWAY = [
    ("{{ 'x' * 300000000 }}", "the operator '*' would make a value of 300,000,000 characters"),
    ("{{ [0] * 300000000 }}", "the operator '*' would make a value of 300,000,000"),
    ("{{ 2 ** 10000000 }}", "the operator '**' would make a number of more than 100,000 bits"),
    (
        "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
        "the operator '*' would make a number",
    ),
    ("{% for i in range(100000) %}{% endfor %}", f"range() of 100,000 numbers; templates are limited to {MAX_RANGE:,}"),
    ("{{ 'x'|center(300000000) }}", "the filter 'center': the argument 300,000,000"),
    ("{{ 'x'.ljust(300000000) }}", "str.ljust() would make a value of 300,000,000"),
    ("{{ '%0300000000d' % 1 }}", "the operator '%' would make a value"),
    ("{{ '%*d' % (9, 1) }}", "a '*' width or precision is not allowed"),
    ("{{ '%0300000000d'|format(1) }}", "the filter 'format' would make a value"),
    ("{{ '{:>300000000}'.format(1) }}", "str.format() would make a value"),
    ("{{ '{:>{}}'.format(1, 300000000) }}", "nested replacement fields"),
    (
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "the operator '~' would make a value of 16,000,000",
    ),
    (
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "the operator '+' would make a value of 16,000,000",
    ),
    ("{{ ('x' * 1000000).replace('x', 'y' * 1000) }}", "str.replace() would make a value of 1,000,000,000"),
    ("{{ ('x' * 1000000)|replace('x', 'y' * 1000) }}", "the filter 'replace' would make a value"),
    ("{{ ([('x' * 1000000)] * 1000)|join }}", "the filter 'join' would make a value of 1,000,000,000"),
    ("{{ ''.join([('x' * 1000000)] * 1000) }}", "str.join() would make a value of 1,000,000,000"),
    ("{{ ('\n' * 1000000)|indent(1000) }}", "the filter 'indent' would make a value"),
    ("{{ ('x ' * 1000000)|wordwrap(1, wrapstring='y' * 1000) }}", "the filter 'wordwrap' would make a value"),
    ("{% for i in range(10000) %}{{ 'x' * 5000 }}{% endfor %}", "the rendered text would make a value"),
    (
        "{% set b %}{% for i in range(10000) %}{{ 'x' * 5000 }}{% endfor %}{% endset %}{{ b|length }}",
        "the rendered text would make a value",
    ),
    (
        "{% set l = [] %}{% for i in range(10000) %}{% set _ = l.append('x' * 5000000) %}{% endfor %}",
        "the template builds more than 100,000,000 characters in all",
    ),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "calls nest too deep (a macro calling itself?)"),
]


@pytest.mark.parametrize(("html", "why"), RUNAWAY, ids=[f"case{i}" for i in range(len(RUNAWAY))])
def test_runaway_templates_are_refused_at_check_naming_the_limit(html: str, why: str) -> None:
    """Repetition, padding, format widths, joins, big integers, big ranges, piled-up values and endless
    recursion: the creation-time check refuses the template, before the value is built, saying why."""
    with pytest.raises(TemplateError) as exc:
        CompiledMailshot("Hello", html, "text").check()
    assert str(exc.value).startswith("HTML template: "), exc.value
    assert why in str(exc.value)


def test_a_spinning_loop_is_stopped_by_the_check_time_limit() -> None:
    """Nested loops that would spin for hours stop at the check's time budget with a clear error (the
    subject part here: each part is named)."""
    spin = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match=r"^subject template: rendering took more than 2 s"):
        CompiledMailshot(spin, "<p>x</p>", "x").check()


def test_the_time_limit_covers_loops_over_any_iterable_and_is_lifted_after() -> None:
    """A loop over a big list (no range() involved) is stopped too; tracing ends with the limit."""
    import sys

    env = LimitedSandbox()
    template = env.from_string("{% set l = [0] * 5000000 %}{% for i in l %}{% for j in l %}{% endfor %}{% endfor %}")
    with pytest.raises(LimitExceeded, match=r"rendering took more than 0\.2 s"), time_limit(0.2):
        template.render()
    assert sys.gettrace() is None


def test_per_recipient_renders_keep_the_size_limits() -> None:
    """Outside the check (no time limit), a value too big for a recipient is still refused for that
    recipient: the send loop records a TemplateError instead of filling the memory."""
    compiled = CompiledMailshot("Hi", "{% if nom == 'Big' %}{{ 'x' * (nom|length * 100000000) }}{% endif %}ok", "t")
    compiled.check()
    assert compiled.render(Personalisation(email="a@example.org", nom="Ann")).html == "ok"
    with pytest.raises(TemplateError, match=r"cannot personalise the message for b@example\.org: the operator"):
        compiled.render(Personalisation(email="b@example.org", nom="Big"))


def test_ordinary_templates_are_not_affected() -> None:
    """What newsletters do (formats, ranges, joins, macros, set blocks, escaping filters, a big but
    reasonable page) renders as before."""
    html = (
        "{% macro item(x) %}<li>{{ x|upper }}</li>{% endmacro %}"
        "{% set head %}<h1>{{ nom|e }}</h1>{% endset %}{{ head }}"
        "<ul>{% for l in listes %}{{ item(l) }}{% endfor %}</ul>"
        "{{ '%05.1f'|format(3.14159) }} {{ '{:>6}'.format('r') }} {{ '%s-%s' % (lang, status) }}"
        " {{ range(5)|join(',') }} {{ listes|join(' & ') }} {{ 'ab' * 3 }} {{ 2 ** 64 }}"
        " {{ ('word ' * 30)|wordwrap(40)|length }} {{ 'a\nb'|indent(2) }} {{ nom|replace('o', '0') }}"
        " {{ 'x'.ljust(3, '.') }} {{ nom ~ '!' }} {{ ('y' * 2000000)|length }}"
    )
    out = CompiledMailshot("{{ nom }}", html, "{{ listes }}")
    out.check()
    got = out.render(Personalisation(email="z@example.org", nom="Zoé <o>", listes=("a", "b"), lang="fr")).html
    assert got.startswith(
        "<h1>Zoé &lt;o&gt;</h1><ul><li>A</li><li>B</li></ul>003.1      r fr-valid 0,1,2,3,4 a &amp; b"
    )
    assert "ababab 18446744073709551616 " in got and "Zo&lt;0&gt;" not in got and "Z0é &lt;0&gt;" in got
    assert got.endswith("x.. Zoé &lt;o&gt;! 2000000")


def test_the_budget_counts_one_render_only() -> None:
    """The total a render may build is per render: many renders of a big page never add up."""
    env = LimitedSandbox()
    template = env.from_string("{{ ('x' * 9000000)|length }}")
    for _ in range(20):  # 20 x 9 M > MAX_PRODUCED: fine, one budget each
        with budget():
            assert template.render() == "9000000"
    assert MAX_SIZE == 10_000_000
