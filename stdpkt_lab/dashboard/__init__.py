"""The Jupyter face of a running lab: the only package that imports ipywidgets and bokeh.

::

    with sl.Lab(g) as lab:
        dash = lab.dashboard()   # an ipywidgets VBox; the last expression of a cell shows it
        ...
        dash.close()             # stops its update thread (stopping the lab also ends it)

It reads the same public API any script reads (``lab.sampler``, ``lab.trace``,
``lab.instances``, ``lab.exec``): chain graph (bokeh ``from_networkx``), live
packets/s and bits/s per link (``ColumnDataSource.stream`` with rollover), a
table of recent packets on a chosen link, and controls that act on the chain.
BokehJS goes into the notebook inline (no CDN needed).
"""

from .actions import TRAFFIC_KINDS, Actions, traffic_command
from .widget import Dashboard, LiveBokehModel, load_bokehjs

__all__ = ["Dashboard", "Actions", "LiveBokehModel", "load_bokehjs", "traffic_command", "TRAFFIC_KINDS"]
