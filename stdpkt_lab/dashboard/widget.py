"""``Dashboard``: one ipywidgets VBox showing a running lab, updated by one background thread."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import scapy.layers.inet  # noqa: F401  binds IP/TCP/UDP/ICMP under Ether: lab.trace dissects them
import scapy.layers.inet6  # noqa: F401  (and IPv6 neighbour discovery, seen on every link)
from bokeh.layouts import column, row
from bokeh.resources import Resources
from jupyter_bokeh import BokehModel

from .actions import Actions
from .conditions_controls import ConditionsControls
from .controls import Controls
from .formatting import human_bps, human_pps, packet_rows, packets_html
from .graph import STATE_COLOURS, ChainGraph, LinkKey
from .rates import RatePlots
from .state_tab import StateTab

if TYPE_CHECKING:
    from .source import LabView

__all__ = ["Dashboard", "LiveBokehModel", "load_bokehjs"]

log = logging.getLogger(__name__)

#: BokehJS is shipped inside the notebook output (no CDN: it is not reachable offline).
INLINE_RESOURCES = Resources(mode="inline", components=["bokeh"])


def load_bokehjs() -> None:
    """Publish BokehJS (inline, core only, about 1.3 MB) into the current cell's output."""
    from bokeh.io.notebook import load_notebook

    load_notebook(resources=INLINE_RESOURCES, hide_banner=True)


class LiveBokehModel(BokehModel):
    """A ``BokehModel`` whose synced state is the document as it is *now*.

    jupyter_bokeh renders a view from ``render_bundle``, computed once at
    construction; later changes only travel as patch messages to the views that
    exist.  A browser reload makes new views from the kernel's state, so the
    bundle is re-serialised (under the owner's lock) whenever the state is asked
    for, without pushing it to the views already open.
    """

    def __init__(self, model: Any, lock: threading.RLock, **kwargs: Any) -> None:
        self._doc_lock = lock
        super().__init__(model, **kwargs)

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        if key is None or key == "render_bundle" or (isinstance(key, (list, tuple, set))
                                                       and "render_bundle" in key):
            with self._doc_lock:
                self._trait_values["render_bundle"] = self._model_to_traits(self._model)
                return super().get_state(key, drop_defaults)
        return super().get_state(key, drop_defaults)


class Dashboard(widgets.VBox):
    """The live view of ``lab``: chain graph, rate plots, packet table and controls.

    ``lab.dashboard()`` makes one and starts it.  One daemon thread
    (``stdpkt-dashboard``) refreshes everything ``rate_hz`` times a second (the
    packet table ``table_hz`` times) from the lab's sampler, traces and
    instance states, so the view stays live while a cell is busy; the controls'
    work runs in :class:`~.actions.Actions`' pool.  :meth:`stop` (or
    :meth:`close`, or the lab stopping) ends the thread.
    """

    def __init__(self, lab: LabView, *, rate_hz: float = 4.0, table_hz: float = 2.0, table_rows: int = 12,
                 window_s: float = 60.0, capture_dir: str = "captures") -> None:
        self.lab = lab
        self.rate_hz = rate_hz
        self.table_every = max(1, round(rate_hz / table_hz))
        self.table_rows = table_rows
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.time()
        self._round = 0
        self._last_sample = 0.0
        self._shown_table: tuple[Any, ...] = ()
        self._rates: dict[LinkKey, tuple[float, float]] = {}
        self._info: dict[str, str] = {}
        self.errors = 0

        self.links: list[tuple[str, str]] = [(lp.a, lp.b) for lp in lab.plan.links]
        self.graph = ChainGraph(lab.plan)
        # the states as they are now, before the first serialisation: a node whose state
        # never changes again would otherwise be drawn in the "created" colour for good
        self.graph.update({n: i.state.value for n, i in lab.instances.items()}, {})
        self.rates = RatePlots([f"{a}-{b}" for a, b in self.links], keep=int(window_s * rate_hz),
                               window_s=window_s)
        self.plots = LiveBokehModel(row(self.graph.figure, column(self.rates.pps, self.rates.bps)),
                                    self._lock)
        self.actions = Actions(lab)
        self.controls = Controls(lab, self.actions)
        self.state_tab = StateTab(lab)
        self.state_tab.attach(self.controls.tabs)
        self.conditions = ConditionsControls(lab, self.actions, self.graph)  # link conditions tab
        titles = tuple(self.controls.tabs.titles)
        self.controls.tabs.children = (*self.controls.tabs.children, self.conditions.widget)
        self.controls.tabs.titles = (*titles, "link conditions")
        from .live_controls import LiveControls  # the 'live chain' tab (insert/remove/steer)

        self.live_controls = LiveControls(lab, self.actions, self)
        self.controls.tabs.children = (*self.controls.tabs.children, self.live_controls.widget)
        self.controls.tabs.set_title(len(self.controls.tabs.children) - 1, "live chain")

        self.status = widgets.HTML()
        legend = " ".join(f"<span style='color:{c}'>&#9679;</span> {s}"
                          for s, c in STATE_COLOURS.items() if s not in ("created", "exited"))
        self.legend = widgets.HTML(f"<span style='font-size:11px'>{legend}</span>")
        self.link = widgets.Dropdown(options=[(f"{a} ⟷ {b}", (a, b)) for a, b in self.links],
                                     description="link", layout=widgets.Layout(width="230px"))
        self.pause = widgets.ToggleButton(value=False, description="pause", icon="pause",
                                          layout=widgets.Layout(width="auto"),
                                          tooltip="freeze the packet table (tracing goes on)")
        self.filter = widgets.Text(placeholder="pcap filter, e.g. tcp port 80", description="filter",
                                   layout=widgets.Layout(width="270px"), continuous_update=False)
        self.filter.observe(lambda ch: self.actions.set_filter(self.link.value, ch["new"]), names="value")
        self.capture_path = widgets.Text(value=capture_dir, description="save to",
                                         layout=widgets.Layout(width="260px"))
        self.save_button = widgets.Button(description="save pcap", icon="download",
                                          layout=widgets.Layout(width="auto"))
        self.save_button.on_click(lambda _: self.actions.save_pcap(self.link.value, self.capture_path.value))
        self.table = widgets.HTML(packets_html([], title="recent packets"))
        for widget, name in ((self.plots, "stdpkt-plots"),
                             (self.table, "stdpkt-table"), (self.status, "stdpkt-status")):
            widget.add_class(name)  # stable hooks for the browser test and for styling
        super().__init__(children=[
            self.status,
            self.plots,
            self.legend,
            widgets.HBox([self.link, self.pause, self.filter]),
            widgets.HBox([self.capture_path, self.save_button]),
            self.table,
            self.controls.widget,
        ])
        self.add_class("stdpkt-dashboard")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Dashboard:
        """Start the update thread (idempotent); returns self, so ``lab.dashboard()`` displays it."""
        if self._thread is None:
            try:  # bokeh's stream() imports pandas lazily: never for the first time in two threads
                import pandas  # noqa: F401
            except ImportError:
                pass
            if self.lab.state.value == "running" and not self.lab.sampler.running:
                self.lab.sampler.start()  # a Lab(sample_hz=None) has no rates otherwise
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stdpkt-dashboard", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the update thread (the widget keeps its last state)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self.stop()
        self.actions.close()
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        load_bokehjs()  # in the same output, before the widget: reloads of the page get it too
        return super()._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------ updates
    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        while not self._stop.is_set():
            started = time.monotonic()
            live = self.lab.state.value == "running"
            try:
                self.refresh()
            except Exception:  # one bad round must not end the view
                self.errors += 1
                log.exception("dashboard refresh failed")
            if not live:  # the lab has stopped: the last round showed it
                break
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def refresh(self) -> None:
        """One update round (the thread calls this; tests may call it directly)."""
        with self._lock:
            self._round += 1
            states = self._states()
            sample = self.lab.sampler.latest
            if sample is not None and sample.time > self._last_sample:
                self._last_sample = sample.time
                rates: dict[LinkKey, tuple[float, float]] = {}
                for ls in sample.links:
                    key = frozenset((ls.src, ls.dst))
                    pps, bps = rates.get(key, (0.0, 0.0))
                    rates[key] = (pps + ls.pps, bps + ls.bps)
                self._rates = rates
                self._info = {n: _node_info(ns) for n, ns in sample.nodes.items()}
                self.rates.push(round(max(0.0, sample.time - self._t0), 2),
                                [rates.get(frozenset(link), (0.0, 0.0)) for link in self.links])
            if self.lab.state.value != "running":
                self._rates = {}
            self.graph.update(states, self._rates, self._info)
            self._status(states, sample)
            self.controls.refresh()
            self.state_tab.refresh()
            self.conditions.refresh()
            self.live_controls.refresh()
            if self._round % self.table_every == 1 or self.table_every == 1:
                self._refresh_table()

    def _states(self) -> dict[str, str]:
        lab_state = self.lab.state.value
        states = {}
        for name, instance in self.lab.instances.items():
            state = instance.state.value
            states[name] = "stopped" if lab_state == "stopped" and state == "running" else state
        return states

    def _status(self, states: dict[str, str], sample: Any) -> None:
        total_pps = sum(ls.pps for ls in sample.links) if sample else 0.0
        total_bps = sum(ls.bps for ls in sample.links) if sample else 0.0
        running = sum(1 for s in states.values() if s == "running")
        self.status.value = (
            f"<b>lab {html.escape(self.lab.state.value)}</b> · {running}/{len(states)} NFs running · "
            f"all links: {human_pps(total_pps)}, {human_bps(total_bps)} · "
            f"updated {time.strftime('%H:%M:%S')}")

    def _refresh_table(self) -> None:
        if self.pause.value or self.lab.state.value != "running":
            return
        link = self.link.value
        if link is None:
            return
        try:
            packets = self.lab.trace(link, self.table_rows)
        except (KeyError, RuntimeError):  # the link is being re-joined (an NF restarts)
            return
        key = (link, tuple((float(p.time), len(p)) for p in packets))
        if key == self._shown_table:
            return
        self._shown_table = key
        a, b = link
        self.table.value = packets_html(packet_rows(packets), title=f"recent packets on {a} ⟷ {b}",
                                        note=f"(newest first, last {self.table_rows})")

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the update thread (a consistent read of the models in tests)."""
        with self._lock:
            yield


def _node_info(ns: Any) -> str:
    parts = []
    if ns.conntrack_entries is not None:
        parts.append(f"conntrack {ns.conntrack_entries}")
    for row_ in ns.ipvs:
        parts.append(f"{row_['backend']} active {row_['active']}")
    return ", ".join(parts)
