"""The explorers' controls: one ipywidget per method option, shown when it applies.

Which options a method has, their defaults, bounds and help come from its
record in :mod:`qviz.registry` (:func:`qviz.session.control_options`); this
module only decides how an option looks. An option no method had when this
was written (a new method's ``n_iter``, say) still gets a plain checkbox or
number box from its kind, with its help as the tooltip.

It also holds the one rule every explorer's callbacks follow
(:func:`shows_errors`): an exception in an observer or a click callback
becomes a message inside the widget, never a traceback in the notebook, and
the widget keeps working.
"""
from __future__ import annotations

import functools
import html
import logging
from typing import Callable

import ipywidgets as widgets

from qviz import registry
from qviz.registry import Option
from qviz.session import control_options

#: group sizes offered; -1 is one group per output row
GROUP_SIZES = (32, 64, 128, 256, -1)
#: how an option is labelled
LABELS = {"bits": "bits", "group_size": "group size", "sym": "symmetric", "act_order": "act order",
          "imatrix": "imatrix", "damp": "damping", "per_tensor": "per tensor"}
#: the style of every labelled control: the label as wide as its text
STYLE = {"description_width": "initial"}
#: the style of a warning or an error (Okabe–Ito vermillion)
WARN = "color:#D55E00"

log = logging.getLogger(__name__)


def error_html(text: str) -> str:
    """``text`` as the explorers show a warning or an error (escaped, class ``qviz-error``)."""
    return f"<span class='qviz-error' style='{WARN}'>⚠ {html.escape(text)}</span>"


def shows_errors(callback: Callable) -> Callable:
    """Decorate a widget method that observers or clicks call: its exceptions become messages.

    Every observer and click callback of the explorers (``explore``,
    ``compare``, ``explore_gguf``; ``scan``'s heatmap has none) is decorated
    with it, so an exception raised while reacting to a control (a tensor type
    gguf-py cannot decode, a setting that fails, a bug in a view) never
    escapes into the notebook or ipywidgets' log. The decorated method
    returns None after an exception and the widget stays usable: the next
    good change renders.

    The widget (the method's ``self``) shows the exception with its
    ``show_error(text)`` method, ``text`` being ``"<ExceptionType>: <message>"``;
    the traceback goes to this module's logger at level INFO (not printed
    unless logging is configured to show it). An exception in ``show_error``
    itself is only logged.

    Parameters
    ----------
    callback : callable
        A method ``callback(self, *args, **kwargs)`` of a widget with a
        ``show_error(text: str) -> None`` method.

    Returns
    -------
    callable
        The guarded method.

    Examples
    --------
    >>> class Panel:
    ...     def show_error(self, text):
    ...         print("shown:", text)
    ...     @shows_errors
    ...     def on_change(self, change):
    ...         return 1 / change["new"]
    >>> Panel().on_change({"new": 0})
    shown: ZeroDivisionError: division by zero
    """
    @functools.wraps(callback)
    def guarded(widget, *args, **kwargs):
        try:
            return callback(widget, *args, **kwargs)
        except Exception as e:  # the widget's message, never a traceback in the notebook
            log.info("%s.%s failed", type(widget).__name__, callback.__name__, exc_info=True)
            try:
                widget.show_error(f"{type(e).__name__}: {e}")
            except Exception:
                log.error("%s could not show the error", type(widget).__name__, exc_info=True)
            return None

    return guarded


def option_control(option: Option) -> widgets.Widget:
    """The widget of one option, starting at its default, its help as the tooltip."""
    name, default = option.name, option.default
    common = dict(value=default, description=LABELS.get(name, name.replace("_", " ")),
                  tooltip=option.help)
    if name == "bits":
        low = 2 if option.low is None else int(option.low)
        high = 8 if option.high is None else int(option.high)
        return widgets.Dropdown(options=list(range(low, high + 1)), style=STYLE,
                                layout=widgets.Layout(width="110px"), **common)
    if name == "group_size":
        sizes = sorted(set(GROUP_SIZES) | {default}, key=lambda g: (g == -1, g))
        return widgets.Dropdown(options=[("per channel" if g == -1 else str(g), g) for g in sizes],
                                style=STYLE, layout=widgets.Layout(width="180px"), **common)
    if name == "damp":
        return widgets.FloatLogSlider(base=10, min=-4, max=0, step=0.25, readout_format=".4g",
                                      style=STYLE, continuous_update=False, **common)
    if option.choices is not None:
        return widgets.Dropdown(options=list(option.choices), style=STYLE,
                                layout=widgets.Layout(width="180px"), **common)
    if isinstance(default, bool):
        return widgets.Checkbox(indent=False, layout=widgets.Layout(width="auto"), **common)
    if isinstance(default, str):
        return widgets.Text(style=STYLE, layout=widgets.Layout(width="180px"), **common)
    if isinstance(default, int):
        return widgets.IntText(style=STYLE, layout=widgets.Layout(width="160px"), **common)
    return widgets.FloatText(style=STYLE, layout=widgets.Layout(width="180px"), **common)


def method_control(value: str) -> widgets.Dropdown:
    """Every method of :func:`qviz.registry.methods`, labelled (RTN, GPTQ, Q4_K …)."""
    methods = registry.methods()
    options = [(m.label, name) for name, m in methods.items()]
    if value not in methods:
        options.append((value, value))
    return widgets.Dropdown(options=options, value=value, description="method", style=STYLE,
                            layout=widgets.Layout(width="190px"))


def all_option_controls() -> dict[str, widgets.Widget]:
    """One control per option name over all methods (shared when names agree)."""
    controls: dict[str, widgets.Widget] = {}
    for method in registry.methods():
        for option in control_options(method):
            if option.name not in controls:
                controls[option.name] = option_control(option)
    return controls


def offer(dropdown: widgets.Dropdown, value) -> None:
    """Add ``value`` to a dropdown's choices when it is not one (e.g. group size 48)."""
    values = [o[1] if isinstance(o, tuple) else o for o in dropdown.options]
    if value not in values:
        dropdown.options = [*dropdown.options, (str(value), value)]


def set_value(control: widgets.Widget, name: str, value) -> None:
    """Set ``control``, the control of option ``name``, to ``value`` (checked by the registry).

    A dropdown is offered the value first (:func:`offer`) and a slider's range
    is widened to hold it, so a valid value is never refused nor silently
    clamped (``damp=5`` stays 5, not the slider's end).

    Raises
    ------
    ValueError
        For a value a logarithmic slider cannot show (0 or below), naming it.
    """
    if isinstance(control, widgets.Dropdown):
        offer(control, value)
    elif isinstance(control, widgets.FloatLogSlider):
        import math

        if not value > 0:
            raise ValueError(f"{name}={value!r}: the explorer's slider shows only values above 0; "
                             f"choose one (e.g. {name}={control.base ** control.min:g})")
        exponent = math.log(value, control.base)
        control.min = min(control.min, math.floor(exponent))
        control.max = max(control.max, math.ceil(exponent))
    elif isinstance(control, (widgets.FloatSlider, widgets.IntSlider)):
        control.min, control.max = min(control.min, value), max(control.max, value)
    control.value = value


def show_only(controls: dict[str, widgets.Widget], names) -> None:
    """Display the controls in ``names``, hide the rest."""
    names = set(names)
    for name, control in controls.items():
        control.layout.display = None if name in names else "none"
