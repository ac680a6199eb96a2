"""The explorers' controls: one ipywidget per method option, shown when it applies.

Which options a method has comes from its signature
(:func:`qviz.widgets._layer.method_options`); this module only decides how an
option looks. An option no method had when this was written (a new method's
``n_iter``, say) still gets a plain checkbox or number box from its default.
"""
from __future__ import annotations

import ipywidgets as widgets

from qviz import api
from qviz.widgets._layer import method_label, method_options

#: group sizes offered; -1 is one group per output row
GROUP_SIZES = (32, 64, 128, 256, -1)
#: how an option is labelled
LABELS = {"bits": "bits", "group_size": "group size", "sym": "symmetric", "act_order": "act order",
          "imatrix": "imatrix", "damp": "damping", "per_tensor": "per tensor"}
_STYLE = {"description_width": "initial"}


def option_control(name: str, default) -> widgets.Widget:
    """The widget of one option, starting at ``default``."""
    label = LABELS.get(name, name.replace("_", " "))
    box = widgets.Layout(width="auto")
    if name == "bits":
        return widgets.Dropdown(options=list(range(2, 9)), value=default, description=label,
                                style=_STYLE, layout=widgets.Layout(width="110px"))
    if name == "group_size":
        sizes = sorted(set(GROUP_SIZES) | {default}, key=lambda g: (g == -1, g))
        return widgets.Dropdown(options=[("per channel" if g == -1 else str(g), g) for g in sizes],
                                value=default, description=label, style=_STYLE,
                                layout=widgets.Layout(width="180px"))
    if name == "damp":
        return widgets.FloatLogSlider(value=default, base=10, min=-4, max=0, step=0.25,
                                      description=label, readout_format=".4g", style=_STYLE,
                                      continuous_update=False)
    if isinstance(default, bool):
        return widgets.Checkbox(value=default, description=label, indent=False, layout=box)
    if isinstance(default, int):
        return widgets.IntText(value=default, description=label, style=_STYLE,
                               layout=widgets.Layout(width="160px"))
    return widgets.FloatText(value=default, description=label, style=_STYLE,
                             layout=widgets.Layout(width="180px"))


def method_control(value: str) -> widgets.Dropdown:
    """Every method of :func:`qviz.api.method_names`, labelled (RTN, GPTQ, Q4_K …)."""
    names = api.method_names()
    if value not in names:
        names.append(value)
    return widgets.Dropdown(options=[(method_label(m), m) for m in names], value=value,
                            description="method", style=_STYLE,
                            layout=widgets.Layout(width="190px"))


def all_option_controls() -> dict[str, widgets.Widget]:
    """One control per option name over all methods (shared when names agree)."""
    controls: dict[str, widgets.Widget] = {}
    for method in api.method_names():
        for name, default in method_options(method).items():
            if name not in controls:
                controls[name] = option_control(name, default)
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
