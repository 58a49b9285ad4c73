"""Look of the dashboard: one inline stylesheet (no assets folder, no CDN) and plot defaults."""

from __future__ import annotations

from typing import Any

from afmon.dashboard.colours import PALETTE

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

PLOT_LAYOUT: dict[str, Any] = {
    "font": {"family": FONT, "size": 13},
    "colorway": list(PALETTE),
    "margin": {"l": 70, "r": 20, "t": 40, "b": 60},
    "height": 360,
    "plot_bgcolor": "#ffffff",
    "paper_bgcolor": "#ffffff",
    "legend": {"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top"},
    "hovermode": "x unified",
}

# the member grid (dash-ag-grid, the VO page): AG Grid's Alpine theme in the app's font and
# colours; every column sorts and has a filter box under its header
GRID_OPTIONS: dict[str, Any] = {
    "theme": {
        "function": "themeAlpine.withParams({fontFamily: 'inherit', fontSize: 13, "
        "headerBackgroundColor: '#f5f7fa', accentColor: '#0072B2', wrapperBorderRadius: 6, "
        "cellHorizontalPadding: 10})"
    },
    "pagination": True,
    "domLayout": "autoHeight",
    "animateRows": False,
    "suppressCellFocus": True,
}
GRID_COLUMN: dict[str, Any] = {
    "sortable": True,
    "filter": True,
    "floatingFilter": True,
    "resizable": True,
    "wrapHeaderText": True,
    "autoHeaderHeight": True,
    "minWidth": 90,
    "flex": 1,
}
# amounts: 2 decimals, or at most 2 significant figures below 0.01 (as `figures.fmt_number`)
GRID_NUMBER: dict[str, Any] = {
    "type": "rightAligned",
    "filter": "agNumberColumnFilter",
    "minWidth": 110,
    "valueFormatter": {
        "function": "params.value == null ? '' : params.value === 0 ? '0' : "
        "Math.abs(params.value) < 0.01 ? d3.format('.2~r')(params.value) : "
        "d3.format(',.2f')(params.value)"
    },
    "cellStyle": {"fontVariantNumeric": "tabular-nums"},
}
# counts (sessions, jobs): integers
GRID_COUNT: dict[str, Any] = {
    **GRID_NUMBER,
    "valueFormatter": {"function": "params.value == null ? '' : d3.format(',.0f')(params.value)"},
}
# long identifiers (issuer|subject): wrapped anywhere, the row as high as it needs
GRID_WRAPPED: dict[str, Any] = {
    "wrapText": True,
    "autoHeight": True,
    "cellStyle": {"overflowWrap": "anywhere", "lineHeight": "1.4", "padding": "6px 10px"},
}

CSS = """
body { margin: 0; font-family: $FONT; color: #1f2933; background: #f5f7fa; }
.shell { max-width: 1200px; margin: 0 auto; padding: 0 16px 24px; }
header.top { display: flex; align-items: baseline; gap: 16px; padding: 12px 0;
  border-bottom: 1px solid #d9e2ec; }
header.top h1 { margin: 0; font-size: 1.5rem; }
header.top .tagline { color: #52606d; flex: 1; }
nav a { margin-left: 16px; text-decoration: none; color: #0072B2; font-weight: 600; }
nav a.active { color: #1f2933; border-bottom: 2px solid #0072B2; }
.banner { margin: 12px 0; padding: 10px 14px; border-radius: 6px; }
.banner.demo { background: #fff4d6; border: 2px dashed #E69F00; }
.banner.signin { background: #fde8e8; border: 2px solid #D55E00; }
.banner strong { display: block; margin-bottom: 6px; }
.picker { max-width: 560px; }
.controls { display: flex; align-items: center; gap: 16px; margin: 8px 0 16px; flex-wrap: wrap; }
.controls label { font-weight: 600; }
.controls .window { color: #52606d; font-size: 0.9rem; }
.radio-inline label { margin-right: 12px; font-weight: normal; }
.card { background: #fff; border: 1px solid #d9e2ec; border-radius: 8px; padding: 12px 16px;
  margin-bottom: 16px; }
.summary { display: flex; gap: 24px; flex-wrap: wrap; }
.summary .big { font-size: 1.6rem; font-weight: 700; }
.tiles { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 16px; }
.tile { background: #fff; border: 1px solid #d9e2ec; border-left: 5px solid #0072B2;
  border-radius: 8px; padding: 10px 14px; min-width: 220px; }
.tile h4 { margin: 0 0 6px; }
.tile table td { padding: 1px 8px 1px 0; }
.tile td.num { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
table.data { border-collapse: collapse; width: 100%; font-size: 0.92rem; }
table.data th, table.data td { border-bottom: 1px solid #e4e7eb; padding: 5px 8px;
  text-align: left; }
table.data td.num, table.data th.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { color: #52606d; font-style: italic; padding: 8px 0; }
.notice { padding: 16px; background: #fff; border: 1px solid #d9e2ec; border-radius: 8px; }
.filters { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-end; }
.field { display: flex; flex-direction: column; gap: 4px; min-width: 200px; }
.field label { font-weight: 600; font-size: 0.9rem; }
.field input[type=text] { padding: 7px 8px; border: 1px solid #cbd2d9; border-radius: 4px; }
.controls .dates { display: flex; align-items: center; gap: 6px; }
.row { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }
.hint { color: #52606d; font-size: 0.85rem; }
.button { background: #0072B2; color: #fff; border: 0; border-radius: 4px; padding: 7px 14px;
  font-weight: 600; cursor: pointer; }
.button:hover { background: #005b8f; }
.tile.ok { border-left-color: #009E73; }
.tile.bad { border-left-color: #D55E00; }
.tile.muted { border-left-color: #9aa5b1; }
.tile.warn { border-left-color: #E69F00; }
.hint.stale, td.stale { color: #8a5a00; font-weight: 600; }
.tile a { color: #0072B2; font-weight: 600; }
.gauge { height: 8px; background: #e4e7eb; border-radius: 4px; margin: 4px 0 2px; }
.gauge div { height: 8px; background: #0072B2; border-radius: 4px; }
/* grid headers wrap between words, never inside one */
.ag-header-cell-text { word-break: normal !important; overflow-wrap: normal !important;
  hyphens: manual; }
footer.bottom { margin-top: 24px; color: #7b8794; font-size: 0.85rem; }
""".replace("$FONT", FONT)

INDEX_STRING = (
    """<!DOCTYPE html>
<html lang="en">
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <style>"""
    + CSS
    + """</style>
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""
)
