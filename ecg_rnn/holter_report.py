"""Holter report of one recording, written as PDF (reportlab) or self-contained HTML.

Top to bottom: recording details; the summary table (beats, heart rate, V and S counts and per hour,
couplets, runs, bigeminy, pauses, AF burden, noise share), each count saying whether it rests on reviewed
or suggested classes; the heart-rate trend with AF and noise shaded; the hourly table; the event counts;
one example strip per event kind and per morphology group; the model and threshold used.

The report is bounded whatever the recording's length: the trend is binned to a fixed number of points,
strips are a fixed length and decimated, and at most `ReportConfig.max_strips` strips are drawn.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from ecg_rnn.errors import RecordError
from ecg_rnn.events import EPISODE_KINDS, EVENT_KINDS, BeatTrack, EventConfig, heart_rate, hourly, summary

StripReader = Callable[[float, float], tuple[np.ndarray, np.ndarray]]
SignalSource = Union[np.ndarray, StripReader]
FORMATS = (".pdf", ".html")
KIND_TITLES = {
    "V_isolated": "Isolated ventricular beat", "V_couplet": "Ventricular couplet",
    "V_run": "Ventricular run (< tachycardia rate)", "VT": "Ventricular tachycardia",
    "V_bigeminy": "Ventricular bigeminy", "V_trigeminy": "Ventricular trigeminy",
    "S_isolated": "Isolated supraventricular beat", "S_couplet": "Supraventricular couplet",
    "S_run": "Supraventricular run (< tachycardia rate)", "SVT": "Supraventricular tachycardia",
    "pause": "Pause", "AF": "Atrial fibrillation / flutter", "noise": "Noise",
    "HR_min": "Lowest heart rate", "HR_max": "Highest heart rate",
}
REVIEW_WORDS = {"all": "reviewed", "part": "partly reviewed", "none": "suggested"}
CLASS_COLOURS = {"N": "#333333", "S": "#1f77b4", "V": "#d62728", "F": "#9467bd", "Q": "#7f7f7f"}
EPISODE_COLOURS = {"AF": "#ff7f0e", "noise": "#7f7f7f"}
HIGHLIGHT_MARGIN_S = 0.2  # the shaded span reaches this far past the event's first and last R-peak (its QRS)


@dataclass(frozen=True)
class ReportConfig:
    """How much the report shows."""

    strip_s: float = 10.0  # every example strip spans this long
    strip_lead_in_s: float = 2.0  # a strip starts this long before its event (long events: from their start)
    max_strips: int = 20  # event kinds first, then morphology groups
    max_groups: int = 6  # the largest groups get a strip
    max_leads: int = 3  # strips draw at most this many leads
    trend_bins: int = 1500  # the heart-rate trend is binned to at most this many points
    max_strip_points: int = 4000  # a strip's samples are decimated to at most this many per lead
    dpi: int = 110


# ---------------------------------------------------------------------------------------------
# The document: a few neutral blocks, rendered as PDF or HTML


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Grid:
    header: list[str]  # empty: a key-value table without a header row
    rows: list[list[str]]


@dataclass(frozen=True)
class Picture:
    png: bytes
    caption: str
    width_cm: float = 17.0


def write_report(path, *, recording: dict, beats: pd.DataFrame, events: pd.DataFrame, signal: SignalSource,
                 lead_names, fs: float, model: dict, threshold: float, threshold_percentile: float | None = None,
                 config: ReportConfig = ReportConfig(), event_config: EventConfig = EventConfig()) -> Path:
    """Write the Holter report of one recording to `path` (.pdf or .html) and return the path.

    beats: one row per beat with `time_s` and `class` (the reviewer's class where reviewed, else the
    suggested one), optional `reviewed` and `noisy` (bool) and `groups` (morphology group id).
    events: `ecg_rnn.events.detect_events` of the same beats (its AF and noise rows are the episodes).
    signal: an (n, leads) array at `fs`, or a callable strip(start_s, end_s) -> (t, (m, leads) array).
    recording: shown as given; `duration_s` is required when `signal` is a callable.
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise RecordError(f"{path.name}: a report is written as {' or '.join(FORMATS)}; pick one of those suffixes")
    strip = _strip_reader(signal, fs)
    duration_s = _duration(recording, signal, fs)
    episodes = events.loc[events.kind.isin(EPISODE_KINDS), ["kind", "start_s", "end_s"]]
    track = BeatTrack.from_frame(beats, duration_s=duration_s, episodes=episodes)
    name = recording.get("name", path.stem)
    shown = {k: v for k, v in recording.items() if k != "duration_s"}  # the duration row says it as a clock
    blocks = [Heading(f"Holter report: {name}"),
              Heading("Recording", 2),
              _key_values({**shown, "sampling rate": f"{fs:g} Hz", "leads": ", ".join(map(str, lead_names)),
                           "duration": _clock(duration_s)}),
              *_summary_section(track, events, event_config),
              *_heart_rate_section(track, events, config, event_config),
              Heading("Events", 2), _event_count_grid(events),
              Heading("Example strips", 2), *_example_strips(beats, events, strip, list(lead_names), config),
              Heading("Model", 2),
              _key_values({**model, "threshold": _threshold_text(threshold, threshold_percentile)})]
    render = _render_pdf if path.suffix.lower() == ".pdf" else _render_html
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        render(blocks, partial, title=f"Holter report: {name}")
        os.replace(partial, path)  # a reader never sees half a report
    finally:
        partial.unlink(missing_ok=True)
    return path


def _summary_section(track: BeatTrack, events: pd.DataFrame, event_config: EventConfig) -> list:
    return [Heading("Summary", 2),
            Text("Source: reviewed = every beat behind the count was confirmed by a reviewer; suggested = the "
                 "model's suggested classes; partly reviewed = some of each."),
            _summary_grid(summary(track, events, event_config), event_config)]


def _heart_rate_section(track: BeatTrack, events: pd.DataFrame, config: ReportConfig,
                        event_config: EventConfig) -> list:
    caption = (f"Heart rate ({event_config.hr_average_intervals}-interval averages over clean beats: mean line, "
               "min-max band); AF shaded orange, noise grey.")
    return [Heading("Heart rate", 2), Picture(_trend_png(track, events, config, event_config), caption),
            _hourly_grid(hourly(track, event_config))]


def _threshold_text(threshold: float, percentile: float | None) -> str:
    where = f" ({percentile:g}th percentile of held-out normal beats)" if percentile is not None else ""
    return f"{threshold:.4g}{where}"


# ---------------------------------------------------------------------------------------------
# Tables


def _key_values(values: dict) -> Grid:
    return Grid([], [[str(k), str(v)] for k, v in values.items()])


def _summary_grid(s: dict, cfg: EventConfig) -> Grid:
    r = s["reviewed"]
    rows = [
        ["Beats", f"{s['beats']}", "beat times"],
        ["Mean heart rate", f"{_number(s['hr_mean_bpm'])} bpm", "beat times"],
        ["Lowest heart rate", f"{_number(s['hr_min_bpm'])} bpm at {_clock(s['hr_min_time_s'])}", "beat times"],
        ["Highest heart rate", f"{_number(s['hr_max_bpm'])} bpm at {_clock(s['hr_max_time_s'])}", "beat times"],
    ]
    for cls, word, fast in (("V", "Ventricular", "VT"), ("S", "Supraventricular", "SVT")):
        longest = (f"{s[f'{cls}_longest_run_beats']} beats at {_number(s[f'{cls}_longest_run_bpm'])} bpm"
                   if s[f"{cls}_longest_run_beats"] else "none")
        rows += [
            [f"{word} ({cls}) beats", f"{s[f'{cls}_beats']}", REVIEW_WORDS[r[f"{cls}_beats"]]],
            [f"{word} beats per hour", _number(s[f"{cls}_per_hour"], 1), REVIEW_WORDS[r[f"{cls}_per_hour"]]],
            [f"{word} couplets", f"{s[f'{cls}_couplets']}", REVIEW_WORDS[r[f"{cls}_couplets"]]],
            [f"{word} runs (>= {cfg.run_beats} beats)", f"{s[f'{cls}_runs']}", REVIEW_WORDS[r[f"{cls}_runs"]]],
            [f"  of which {fast} (>= {cfg.tachycardia_bpm:g} bpm)", f"{s[f'{fast}_runs']}",
             REVIEW_WORDS[r[f"{fast}_runs"]]],
            [f"Longest {word.lower()} run", longest, REVIEW_WORDS[r[f"{cls}_longest_run_beats"]]],
        ]
    rows += [
        ["Ventricular bigeminy episodes", f"{s['V_bigeminy_episodes']}", REVIEW_WORDS[r["V_bigeminy_episodes"]]],
        ["Ventricular trigeminy episodes", f"{s['V_trigeminy_episodes']}", REVIEW_WORDS[r["V_trigeminy_episodes"]]],
        [f"Pauses (> {cfg.pause_s:g} s)", f"{s['pauses']}", "beat times"],
        ["Longest pause", f"{s['longest_pause_s']:.2f} s at {_clock(s['longest_pause_time_s'])}"
         if s["pauses"] else "none", "beat times"],
        ["AF burden", f"{100 * s['af_burden']:.1f}%", "rhythm stage"],
        ["Noise share", f"{100 * s['noise_share']:.1f}%", "quality stage"],
    ]
    return Grid(["Measure", "Value", "Source"], rows)


def _hourly_grid(table: pd.DataFrame) -> Grid:
    rows = [[f"{_clock(h.start_s)}–{_clock(h.end_s)}", f"{h.beats}", _number(h.hr_mean_bpm),
             _number(h.hr_min_bpm), _number(h.hr_max_bpm), f"{h.V}", f"{h.S}", _number(h.ectopics_per_hour)]
            for h in table.itertuples(index=False)]
    return Grid(["Hour", "Beats", "HR mean", "HR min", "HR max", "V", "S", "Ectopics / h"], rows)


def _event_count_grid(events: pd.DataFrame) -> Grid:
    rows = []
    for kind in EVENT_KINDS:
        found = events[events.kind == kind]
        if len(found):
            rows.append([KIND_TITLES[kind], kind, f"{len(found)}", f"{int(found.reviewed.sum())}"])
    return Grid(["Event", "Kind", "Count", "Reviewed"], rows)


def _number(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if value is not None and np.isfinite(value) else "–"


def _clock(seconds: float) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Figures


def _png(figure: MplFigure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _trend_png(track: BeatTrack, events: pd.DataFrame, config: ReportConfig, event_config: EventConfig) -> bytes:
    rates = heart_rate(track, event_config)
    in_hours = track.duration_s > 2 * 3600
    scale, unit = (3600.0, "h") if in_hours else (60.0, "min")
    figure = MplFigure(figsize=(7.5, 2.6))
    ax = figure.add_subplot()
    for episode in events[events.kind.isin(EPISODE_KINDS)].itertuples(index=False):
        ax.axvspan(episode.start_s / scale, episode.end_s / scale, color=EPISODE_COLOURS[episode.kind], alpha=0.25,
                   lw=0)
    if len(rates):
        binned = _binned(rates, track.duration_s, config.trend_bins)
        ax.fill_between(binned.index / scale, binned["min"], binned["max"], color="#1f77b4", alpha=0.25, lw=0)
        ax.plot(binned.index / scale, binned["mean"], color="#1f77b4", lw=0.8)
    ax.set_xlim(0, track.duration_s / scale)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("bpm")
    ax.grid(alpha=0.3)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.18, top=0.96)  # fixed margins: tight_layout is slow
    return _png(figure, config.dpi)


def _binned(rates: pd.DataFrame, duration_s: float, bins: int) -> pd.DataFrame:
    """Mean, min and max heart rate per time bin, indexed by the bin's centre (s)."""
    width = max(duration_s / bins, 1e-9)
    bin_of = np.floor(rates.time_s.to_numpy(float) / width)
    grouped = rates.hr_bpm.astype(float).groupby(bin_of).agg(["mean", "min", "max"])
    grouped.index = (grouped.index + 0.5) * width
    return grouped


def _strip_png(strip: StripReader, start_s: float, end_s: float, beats: pd.DataFrame, highlight: tuple[float, float],
               lead_names: list[str], config: ReportConfig) -> bytes:
    t, values = strip(start_s, end_s)
    values = np.asarray(values, dtype=float).reshape(len(t), -1)[:, :config.max_leads]
    step = max(1, int(np.ceil(len(t) / config.max_strip_points)))
    t, values = np.asarray(t, dtype=float)[::step], values[::step]
    n_leads = values.shape[1]
    figure = MplFigure(figsize=(7.5, 1.1 + 1.0 * n_leads))
    axes = figure.subplots(n_leads, 1, sharex=True, squeeze=False)[:, 0]
    shown = beats[(beats.time_s >= start_s) & (beats.time_s <= end_s)]
    for lead, ax in enumerate(axes):
        ax.axvspan(highlight[0] - HIGHLIGHT_MARGIN_S, highlight[1] + HIGHLIGHT_MARGIN_S, color="#ffdd57", alpha=0.35,
                   lw=0)
        ax.plot(t, values[:, lead], color="black", lw=0.7)
        ax.set_ylabel(str(lead_names[lead]) if lead < len(lead_names) else f"lead {lead + 1}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    top = axes[0]
    for time_s, cls in zip(shown.time_s, shown["class"]):
        top.annotate(cls, (time_s, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                     fontsize=7, color=CLASS_COLOURS.get(cls, "black"))
    axes[-1].set_xlim(start_s, end_s)
    axes[-1].set_xlabel("time (s)", fontsize=8)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.45 / figure.get_figheight(),
                           top=1 - 0.2 / figure.get_figheight(), hspace=0.15)
    return _png(figure, config.dpi)


def _strip_window(start_s: float, end_s: float, config: ReportConfig) -> tuple[float, float]:
    """A strip of fixed length: from lead_in before the event, centred when the event is short."""
    span = end_s - start_s
    first = start_s - (config.strip_s - span) / 2 if span < config.strip_s - 2 * config.strip_lead_in_s \
        else start_s - config.strip_lead_in_s
    first = max(first, 0.0)
    return first, first + config.strip_s


def _example_event(found: pd.DataFrame) -> pd.Series:
    """The event that shows its kind best: most beats, then longest, then earliest."""
    ranked = found.assign(_span=found.end_s - found.start_s) \
        .sort_values(["beats", "_span", "start_s"], ascending=[False, False, True], kind="stable")
    return ranked.iloc[0]


def _example_strips(beats, events, strip: StripReader, lead_names, config: ReportConfig) -> list:
    blocks, budget = [], config.max_strips
    for kind in EVENT_KINDS:
        found = events[events.kind == kind]
        if not len(found) or not budget:
            continue
        event = _example_event(found)
        first, last = _strip_window(event.start_s, event.end_s, config)
        caption = (f"{KIND_TITLES[kind]} ({kind}, {len(found)} in the recording): example at "
                   f"{_clock(event.start_s)}, {event.detail}" + (", reviewed" if event.reviewed else ""))
        blocks.append(Picture(_strip_png(strip, first, last, beats, (event.start_s, event.end_s), lead_names, config),
                              caption))
        budget -= 1
    if "groups" in beats.columns and budget:
        blocks.append(Heading("Morphology groups", 2))
        sizes = beats.groups.value_counts()
        for group in sizes.index[:min(config.max_groups, budget)]:
            members = beats[beats.groups == group]
            beat_time = float(members.time_s.iloc[len(members) // 2])  # a typical member, mid-recording
            first, last = _strip_window(beat_time, beat_time, config)
            share = members["class"].value_counts(normalize=True)
            caption = (f"Group {group}: {len(members)} beats, {100 * share.iloc[0]:.0f}% {share.index[0]}; "
                       f"example at {_clock(beat_time)}")
            blocks.append(Picture(_strip_png(strip, first, last, beats, (beat_time, beat_time), lead_names, config),
                                  caption))
    return blocks


# ---------------------------------------------------------------------------------------------
# Signal access


def _strip_reader(signal: SignalSource, fs: float) -> StripReader:
    if callable(signal):
        return signal
    data = np.asarray(signal)
    if data.ndim not in (1, 2) or not len(data):
        raise RecordError(f"signal has shape {data.shape}; pass an (n, leads) array or a strip callable")
    data = data.reshape(len(data), -1)

    def strip(start_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
        first = max(int(np.floor(start_s * fs)), 0)
        stop = min(int(np.ceil(end_s * fs)), len(data))
        return np.arange(first, stop) / fs, data[first:stop]

    return strip


def _duration(recording: dict, signal: SignalSource, fs: float) -> float:
    if "duration_s" in recording:
        return float(recording["duration_s"])
    if callable(signal):
        raise RecordError("recording['duration_s'] is required when the signal is read strip by strip")
    return len(signal) / fs


# ---------------------------------------------------------------------------------------------
# Renderers


def _render_pdf(blocks: list, path: Path, title: str) -> None:
    styles = getSampleStyleSheet()
    heading_style = {1: styles["Title"], 2: styles["Heading2"]}
    grid_style = [("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")]
    header_style = [("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee"))]

    def flowables(block) -> list:
        if isinstance(block, Heading):
            return [Paragraph(xml_escape(block.text), heading_style[block.level])]
        if isinstance(block, Text):
            return [Paragraph(xml_escape(block.text), styles["BodyText"])]
        if isinstance(block, Grid):
            rows = [block.header, *block.rows] if block.header else block.rows
            cells = [[Paragraph(xml_escape(c), styles["BodyText"]) for c in row] for row in rows]
            style = TableStyle(grid_style + (header_style if block.header else []))
            return [Table(cells, repeatRows=1 if block.header else 0, style=style, hAlign="LEFT"),
                    Spacer(1, 0.3 * cm)]
        return [_pdf_image(block), Paragraph(xml_escape(block.caption), styles["Italic"]), Spacer(1, 0.3 * cm)]

    story, heading = [], []
    for block in blocks:
        if isinstance(block, Heading):
            heading += flowables(block)
            continue
        # a heading stays on the page of what follows it; a figure stays with its caption
        story.append(KeepTogether(heading + flowables(block)))
        heading = []
    SimpleDocTemplate(str(path), pagesize=A4, title=title, leftMargin=1.8 * cm, rightMargin=1.8 * cm,
                      topMargin=1.5 * cm, bottomMargin=1.5 * cm).build(story + heading)


def _pdf_image(picture: Picture) -> Image:
    image = Image(io.BytesIO(picture.png))
    ratio = image.imageHeight / image.imageWidth
    image.drawWidth, image.drawHeight = picture.width_cm * cm, picture.width_cm * cm * ratio
    return image


HTML_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
              "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:2px 8px;"
              "font-size:0.9em;text-align:left}th{background:#eee}img{max-width:100%}"
              "figcaption{font-style:italic;font-size:0.9em;margin-bottom:1em}")


def _render_html(blocks: list, path: Path, title: str) -> None:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{HTML_STYLE}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Grid):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            thead = f"<thead><tr>{head}</tr></thead>" if block.header else ""
            parts.append(f"<table>{thead}<tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(block.caption)}'>"
                         f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
