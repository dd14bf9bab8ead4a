"""The files of `tukar report`: each table as CSV and JSON, the PNG plots, and index.html.

A table's cells are rounded once (`Table.cells`); the CSV, the JSON, the page and the plots all
print those same values, so a number on the page is the number in its CSV."""
import csv
import html
import json
import math
import os

PLOTS = ("demand_heatmap", "swaps_per_day", "availability", "returned_soc", "swap_duration",
         "energy", "soh")
HTML_ROWS = 50  # a longer table shows its first rows on the page; its files hold every row


class Table:
    """A titled table: columns (key, label, decimals: None for text) and rows of raw values."""

    def __init__(self, name, title, columns, rows, wide=False, records=False, html_rows=HTML_ROWS):
        self.name, self.title, self.columns, self.rows = name, title, columns, rows
        self.wide = wide  # many narrow columns: a smaller type on the page
        self.records = records  # one block per row on the page (many columns)
        self.html_rows = html_rows

    def cells(self):
        """Every row as [(key, value)], values rounded to their column's decimals."""
        return [[(key, rounded(row.get(key), decimals)) for key, _, decimals in self.columns]
                for row in self.rows]


def rounded(value, decimals):
    """The value as the report states it: text as is, numbers to the column's decimals."""
    if value is None or isinstance(value, str):
        return value
    if decimals is None:
        return str(value)
    if decimals == 0:
        return int(round(value))
    v = round(float(value), decimals)
    return 0.0 if v == 0 else v  # never "-0.0"


def text(value, decimals):
    """A rounded value as written in the CSV and on the page."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) or decimals == 0:
        return "%d" % value
    return "%.*f" % (decimals, value)


def write_table(out_dir, table):
    cells = table.cells()
    decimals = {key: d for key, _, d in table.columns}
    with open(os.path.join(out_dir, table.name + ".csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([key for key, _, _ in table.columns])
        for row in cells:
            w.writerow([text(v, decimals[k]) for k, v in row])
    with open(os.path.join(out_dir, table.name + ".json"), "w", encoding="utf-8") as f:
        json.dump({"name": table.name, "title": table.title,
                   "columns": [{"key": k, "label": label} for k, label, _ in table.columns],
                   "rows": [dict(row) for row in cells]}, f, indent=1, ensure_ascii=False)
        f.write("\n")


# == plots =========================================================================================

def plot_all(tables, out_dir, on_plot=lambda name: None):
    """Writes every plot as PNG; returns {plot name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = {name: [dict(row) for row in table.cells()] for name, table in tables.items()}
    made = {}
    for name in PLOTS:
        on_plot(name)
        fig = _DRAW[name](Figure, rows)
        path = name + ".png"
        fig.savefig(os.path.join(out_dir, path), dpi=100)
        made[name] = path
    return made


def _nothing(fig, ax, what):
    ax.set_axis_off()
    ax.text(0.5, 0.5, what, ha="center", va="center", fontsize=14, color="#555555",
            transform=ax.transAxes)
    return fig


def _figure(Figure, width, height):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _counts(axis):
    """Whole numbers on an axis of counts."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _heatmap(Figure, t):
    rows = t["demand_hour_day"]
    fig, ax = _figure(Figure, 11, 4)
    grid = [[r["h%02d" % h] for h in range(24)] for r in rows]
    top = max(max(g) for g in grid)
    im = ax.imshow(grid, aspect="auto", cmap="YlOrRd", vmin=0, vmax=max(top, 1))
    ax.set_xticks(range(24), ["%02d" % h for h in range(24)])
    ax.set_yticks(range(7), [r["day"] for r in rows])
    ax.set_xlabel("hour of day")
    for i, g in enumerate(grid):
        for h, n in enumerate(g):
            if n:
                ax.text(h, i, str(n), ha="center", va="center", fontsize=8,
                        color="white" if n > top * 0.6 else "black")
    fig.colorbar(im, ax=ax, label="completed swaps")
    if not top:
        ax.set_title("no completed swaps in this range")
    return fig


def _per_day(Figure, t):
    rows = t["swaps_per_day"]
    fig, ax = _figure(Figure, 11, 3.5)
    ax.bar(range(len(rows)), [r["swaps"] for r in rows], color="#2b7bb9")
    step = max(1, math.ceil(len(rows) / 16))
    ticks = list(range(0, len(rows), step))
    ax.set_xticks(ticks, [rows[i]["date"] for i in ticks], rotation=45, ha="right")
    ax.set_ylabel("completed swaps")
    _counts(ax.yaxis)
    if not any(r["swaps"] for r in rows):
        ax.set_title("no completed swaps in this range")
    return fig


def _hbars(Figure, labels, series, xlabel, xlim=None):
    n = len(labels)
    fig, ax = _figure(Figure, 9, min(40, 1.2 + 0.22 * n * len(series)))
    h = 0.8 / len(series)
    for i, (name, values, color) in enumerate(series):
        ax.barh([y + i * h for y in range(n)], [v if isinstance(v, (int, float)) else 0
                                                 for v in values],
                height=h, label=name, color=color)
    ax.set_yticks([y + h * (len(series) - 1) / 2 for y in range(n)], labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if xlim:
        ax.set_xlim(*xlim)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _availability(Figure, t):
    rows = t["availability"]
    if not any(r["samples"] for r in rows):
        return _nothing(*_figure(Figure, 9, 2.5), "no telemetry in this range")
    return _hbars(Figure, [r["cabinet"] for r in rows],
                  [("time with a pack ready", [r["available_pct"] for r in rows], "#2b8a3e"),
                   ("time with an empty slot", [r["empty_slot_pct"] for r in rows], "#f08c00")],
                  "% of the time covered by telemetry", (0, 100))


def _bins(Figure, rows, lo, hi, count, xlabel, ylabel, nothing, color):
    if not rows:
        return _nothing(*_figure(Figure, 9, 3), nothing)
    fig, ax = _figure(Figure, 9, 3.5)
    width = rows[0][hi] - rows[0][lo]
    lefts = [r[lo] for r in rows]
    ax.bar(lefts, [r[count] for r in rows], width=[(r[hi] if r[hi] is not None
                                                    else r[lo] + width) - r[lo] for r in rows],
           align="edge", color=color, edgecolor="white")
    if rows[-1][hi] is None:  # the open-ended bin
        ax.text(rows[-1][lo] + width / 2, rows[-1][count], "%d+" % rows[-1][lo], ha="center",
                va="bottom", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _counts(ax.yaxis)
    return fig


def _soc(Figure, t):
    return _bins(Figure, t["returned_soc"] if any(r["packs"] for r in t["returned_soc"]) else [],
                 "soc_from", "soc_to", "packs", "state of charge of the returned pack, %",
                 "packs", "no completed swaps in this range", "#2b7bb9")


def _duration(Figure, t):
    return _bins(Figure, t["swap_duration"], "seconds_from", "seconds_to", "swaps",
                 "swap duration, s", "swaps", "no completed swaps in this range", "#7048e8")


def _energy(Figure, t):
    rows = [r for r in t["energy"] if r["cabinet"] != "(all)"]
    if not any(r["kwh_drawn"] or r["kwh_charges"] or r["kwh_handed_over"] for r in rows):
        return _nothing(*_figure(Figure, 9, 2.5), "no energy recorded in this range")
    return _hbars(Figure, [r["cabinet"] for r in rows],
                  [("drawn (meter)", [r["kwh_drawn"] for r in rows], "#c92a2a"),
                   ("charges (events)", [r["kwh_charges"] for r in rows], "#f59f00"),
                   ("handed over", [r["kwh_handed_over"] for r in rows], "#2b8a3e")], "kWh")


def _soh(Figure, t):
    return _bins(Figure, t["soh"], "soh_from", "soh_to", "packs", "state of health, %", "packs",
                 "no pack's state of health in this range", "#2b8a3e")


_DRAW = {"demand_heatmap": _heatmap, "swaps_per_day": _per_day, "availability": _availability,
         "returned_soc": _soc, "swap_duration": _duration, "energy": _energy, "soh": _soh}


# == the page =====================================================================================

# Sections: id, title, what they say, and their plots and tables in order.
SECTIONS = (
    ("art21", "Permen ESDM 1/2023, article 21", (
        "What the regulation asks each battery swap station (SPBKLU) to report. Availability, "
        "kWh used and sold, battery types and empty cabins come from the cabinets' own data "
        "(the sections below say how); operator, location, tariff, energy source and brands "
        "come from the operator file, and read <em>not given</em> where it does not say.",),
     (("table", "permen_esdm_1_2023_art21"),)),
    ("demand", "Demand", (
        "Completed swaps (<code>SwapCompleted</code> events), counted by hour of day and day of "
        "week in the report's timezone, per day, and per cabinet.",),
     (("plot", "demand_heatmap"), ("table", "demand_hour_day"), ("plot", "swaps_per_day"),
      ("table", "swaps_per_day"), ("table", "demand_by_cabinet"))),
    ("availability", "Queue-free availability", (
        "From the <code>ready</code> (dispensable packs) and <code>empty</code> (empty slots) "
        "of each telemetry sample. Each sample stands for the time to the next one, capped at "
        "twice the cabinet's median sampling period, so a gap in the telemetry (the cabinet off "
        "line, the link down) counts neither for nor against the cabinet; the last sample "
        "stands until the end of the range, with the same cap. <em>Hours covered</em> is the "
        "time so accounted for.",),
     (("plot", "availability"), ("table", "availability"))),
    ("returned", "Returned packs and swap durations", (
        "The state of charge of the pack each rider brought back "
        "(<code>SwapCompleted.battery_in.soc</code>, bins of 10 points, 100 in the last) and "
        "the swaps' durations (<code>duration_ms</code>, bins of 30 s; 600 s and more share the "
        "last bin).",),
     (("plot", "returned_soc"), ("table", "returned_soc"), ("plot", "swap_duration"),
      ("table", "swap_duration"), ("table", "returned_summary"))),
    ("energy", "Energy", (
        "<em>Drawn</em>: the rise of each cabinet's energy meter (telemetry "
        "<code>energy_wh_total</code>) over the range, the sum of its positive steps between "
        "consecutive samples, so a reset of the meter counts nothing (the resets are counted). "
        "<em>Charges</em>: the sum of <code>ChargeStopped.energy_wh</code>, a cross-check. "
        "<em>Handed over</em>: the sum of <code>SwapCompleted.energy_wh</code>, the energy "
        "riders took away less the energy they brought back.",),
     (("plot", "energy"), ("table", "energy"))),
    ("health", "Fleet health", (
        "Each pack's latest state of health from its battery objects in the range's events "
        "and slot states. Retirements are <code>BatteryRetired</code> events. A fault in a "
        "slot is laid to the pack the slot's latest state before it held; faults of the "
        "cabinet itself, or of an empty slot, count by slot only. Refusals are "
        "<code>BatteryRejected</code> events.",),
     (("plot", "soh"), ("table", "soh"), ("table", "packs_lowest_soh"), ("table", "packs"),
      ("table", "retirements"), ("table", "faults_by_slot"), ("table", "faults_by_pack"),
      ("table", "rejections_by_pack"))),
)

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1c1c1c;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { border-bottom: 2px solid #2b7bb9; padding-bottom: .2em; margin-top: 2.2em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: .4em 0 1.4em; font-size: .92em; }
p.caption { font-weight: 600; margin: 1.2em 0 0; break-after: avoid; }
th, td { border: 1px solid #c8ccd0; padding: .25em .55em; vertical-align: top; }
th { background: #eef2f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.wide { font-size: .78em; } table.wide td, table.wide th { padding: .2em .3em; }
.blocks { display: flex; flex-wrap: wrap; gap: 0 1.6em; align-items: flex-start; }
table.kv { flex: 0 1 34em; } table.kv th { width: 15em; font-weight: 500; }
.files { font-weight: normal; font-size: .9em; margin-left: .8em; }
.note { color: #555; font-size: .9em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
code { font-size: .92em; background: #f3f3f3; padding: 0 .2em; }
@page { size: A4; margin: 14mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  nav, .files { display: none; }
  h2 { break-before: page; } h2:first-of-type { break-before: auto; }
  figure, tr, table.kv { break-inside: avoid; }
}
"""


def write(out_dir, meta, tables, plots):
    """Writes every table's files and index.html; returns the page's path."""
    for table in tables.values():
        write_table(out_dir, table)
    e = html.escape
    op = meta["operator"] or {}
    title = "Swap station report, %s to %s" % (meta["first_day"], meta["last_day"])
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>%s</title><style>%s</style></head><body>" % (e(title), CSS),
           "<h1>%s</h1>" % e(title), '<dl class="meta">']
    for label, value in (
            ("Operator", op.get("operator_name") or "not given"),
            ("Operator id", op.get("operator_id") or "not given"),
            ("From", "%s (%s)" % (meta["start"], meta["start_utc"])),
            ("To (excluded)", "%s (%s)" % (meta["end"], meta["end_utc"])),
            ("Timezone", meta["timezone"] + " (hours, days and times on this page)"),
            ("Cabinets", ", ".join(meta["cabinets"])),
            ("Database", meta["database"]), ("Generated", meta["generated"])):
        out.append("<dt>%s</dt><dd>%s</dd>" % (e(label), e(value)))
    out.append("</dl>")
    out.append('<nav><ol>%s</ol></nav>' % "".join('<li><a href="#%s">%s</a></li>' % (sid, e(t))
                                                  for sid, t, _, _ in SECTIONS))
    for sid, stitle, paragraphs, items in SECTIONS:
        out.append('<section id="%s"><h2>%s</h2>' % (sid, e(stitle)))
        out += ['<p class="note">%s</p>' % p for p in paragraphs]
        for kind, name in items:
            if kind == "plot":
                out.append('<figure><img src="%s" alt="%s"></figure>'
                           % (e(plots[name]), e(name.replace("_", " "))))
            else:
                out.append(table_html(tables[name]))
        out.append("</section>")
    out.append("</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return path


def table_html(table):
    e = html.escape
    cells = table.cells()
    files = '<span class="files"><a href="%s.csv">CSV</a> · <a href="%s.json">JSON</a></span>' % (
        e(table.name), e(table.name))
    shown = cells[:table.html_rows]
    decimals = {key: d for key, _, d in table.columns}
    labels = {key: label for key, label, _ in table.columns}

    def td(key, value):
        cls = ' class="num"' if isinstance(value, (int, float)) else ""
        return '<td data-col="%s"%s>%s</td>' % (e(key), cls, e(text(value, decimals[key])))

    out = []
    if table.html_rows == 0:
        return ('<p data-table-files="%s"><strong>%s</strong>: %d rows, in the files only. %s</p>'
                % (e(table.name), e(table.title), len(cells), files))
    if table.records:
        out.append('<p class="caption">%s %s</p>' % (e(table.title), files))
        out.append('<div class="blocks">')
        for i, row in enumerate(shown):
            out.append('<table class="kv" data-table="%s" data-row="%d">' % (e(table.name), i))
            out += ["<tr><th>%s</th>%s</tr>" % (e(labels[k]), td(k, v)) for k, v in row]
            out.append("</table>")
        out.append("</div>")
    else:
        out.append('<p class="caption">%s %s</p>' % (e(table.title), files))
        out.append('<table data-table="%s"%s><thead><tr>%s</tr></thead><tbody>'
                   % (e(table.name), ' class="wide"' if table.wide else "",
                      "".join("<th>%s</th>" % e(label) for _, label, _ in table.columns)))
        out += ["<tr>%s</tr>" % "".join(td(k, v) for k, v in row) for row in shown]
        out.append("</tbody></table>")
    if not cells:
        out.append('<p class="note">None in this range.</p>')
    elif len(shown) < len(cells):
        out.append('<p class="note">The first %d of %d rows; every row is in %s.csv.</p>'
                   % (len(shown), len(cells), e(table.name)))
    return "\n".join(out)
