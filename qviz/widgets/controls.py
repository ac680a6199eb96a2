"""The explorers' controls: one ipywidget per method option, shown when it applies.

Which options a method has, their defaults, bounds and help come from its
record in :mod:`qviz.registry` (:func:`qviz.session.control_options`); this
module only decides how an option looks. An option no method had when this
was written (a new method's ``n_iter``, say) still gets a plain checkbox or
number box from its kind, with its help as the tooltip.
"""
from __future__ import annotations

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
    if isinstance(default, bool):
        return widgets.Checkbox(indent=False, layout=widgets.Layout(width="auto"), **common)
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


def show_only(controls: dict[str, widgets.Widget], names) -> None:
    """Display the controls in ``names``, hide the rest."""
    names = set(names)
    for name, control in controls.items():
        control.layout.display = None if name in names else "none"
