"""Small HTML helpers for the report: escaping, sections, plotly figures, data tables, the page shell.

Everything a page needs is inline (CSS, plotly.js once, the table script, the data as JSON),
so the file opens offline. Tables are drawn by a few lines of vanilla JS from embedded JSON:
sorting and searching run over every embedded row while only the first page is in the DOM.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

esc = html.escape


@dataclass
class Section:
    """One section of the page: anchor id, title, inner HTML."""

    id: str
    title: str
    body: str


def _clean(v: Any) -> Any:
    """JSON-safe scalar: NaN/inf -> None, numpy scalars -> Python, floats to 6 significant digits."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return float(f"{v:.6g}")
    return v


def to_json(obj: Any) -> str:
    """JSON safe to put inside a <script> element (no `</` sequences)."""
    return json.dumps(obj, separators=(",", ":"), default=str).replace("</", "<\\/")


def figure(fig, div_id: str, height: int | None = None) -> str:
    """A plotly figure as a <div> + script; plotly.js itself is inlined once by `page`."""
    if height is not None:
        fig.update_layout(height=height)
    fig.update_layout(margin=dict(l=60, r=20, t=50, b=50), template="plotly_white")
    inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True})
    return f'<div class="plot" data-plot="{esc(div_id)}">{inner}</div>'


def data_table(df: pd.DataFrame, table_id: str, caption: str = "", page_size: int = 100, sort: str | None = None, descending: bool = True) -> str:
    """A sortable (click a header), searchable table of `df`, drawn client-side from embedded JSON."""
    cols = [str(c) for c in df.columns]
    rows = [[_clean(v) for v in r] for r in df.itertuples(index=False, name=None)]
    numeric = [bool(pd.api.types.is_numeric_dtype(df[c])) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    spec = {"columns": cols, "numeric": numeric, "rows": rows, "pageSize": page_size,
            "sort": cols.index(sort) if sort in cols else None, "desc": descending}
    return (
        f'<div class="table-wrap" id="{esc(table_id)}">'
        f'<div class="table-tools"><input type="search" class="table-search" placeholder="search (e.g. 17 or layer:17)" aria-label="search {esc(table_id)}">'
        f'<span class="table-count"></span></div>'
        + (f'<p class="caption">{esc(caption)}</p>' if caption else "")
        + f'<div class="table-scroll"><table class="data"><thead></thead><tbody></tbody></table></div>'
        f'<script type="application/json" class="table-data">{to_json(spec)}</script></div>'
    )


def static_table(rows: Sequence[Sequence[Any]], header: Sequence[str], cls: str = "static") -> str:
    """A small plain table (already-escaped cells are not expected: every cell is escaped)."""
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def fmt(v: Any) -> str:
    """Human formatting of one cell: 4 significant digits for floats, '' for missing."""
    v = _clean(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde2ea;--accent:#3b6fb6;--bg:#fafbfc}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d6ea;font-size:13px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-weight:600}
main{max-width:1280px;margin:0 auto;padding:8px 32px 60px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 24px;margin:20px 0;scroll-margin-top:56px}
section h2{margin:4px 0 12px;font-size:20px}
section h3{margin:18px 0 6px;font-size:16px}
.headline{font-size:16px;background:#eef4fc;border-left:4px solid var(--accent);padding:10px 14px;margin:8px 0}
.note,.caption{color:var(--muted);font-size:13px;margin:4px 0}
.error{color:#9b1c1c;background:#fdecec;padding:8px 12px;border-radius:6px}
.table-tools{display:flex;gap:12px;align-items:center;margin:6px 0}
.table-search{padding:5px 8px;border:1px solid var(--line);border-radius:5px;width:280px}
.table-count{color:var(--muted);font-size:13px}
.table-scroll{max-height:460px;overflow:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eef0f4;text-align:left;vertical-align:top}
table.data td.num,table.data th.num{text-align:right;font-variant-numeric:tabular-nums}
table.data thead th{position:sticky;top:0;background:#f2f5f9;cursor:pointer;user-select:none;white-space:nowrap}
table.data thead th[aria-sort=ascending]::after{content:" \\25B2"}
table.data thead th[aria-sort=descending]::after{content:" \\25BC"}
table.static th{background:#f2f5f9}
.plot{margin:8px 0}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.gens td{width:33%;white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.tok{display:inline-block;background:#eef2f7;border-radius:4px;padding:0 5px;margin:1px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fcfdff}
.card h4{margin:0 0 4px;font-size:14px}
.card .ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;border-top:1px dashed var(--line);padding:3px 0;margin:0}
.card mark{background:#ffe08a;padding:0 1px}
.status-emerging{border-left:4px solid #2e8b57}.status-disappearing{border-left:4px solid #c0392b}.status-persisting{border-left:4px solid #7f8c8d}
pre.cmd{background:#0f1722;color:#e6edf3;padding:8px 12px;border-radius:6px;overflow:auto;font-size:12px}
details pre{background:#f6f8fa;padding:8px;border-radius:6px;overflow:auto;font-size:12px;max-height:400px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:14px}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;word-break:break-all}
"""

TABLE_JS = r"""
(function(){
  function fmt(v){if(v===null||v===undefined)return "";if(typeof v==="number"){if(Number.isInteger(v))return String(v);var a=Math.abs(v);return (a!==0&&(a<1e-3||a>=1e5))?v.toExponential(3):String(+v.toPrecision(4));}return String(v);}
  function setup(wrap){
    var spec=JSON.parse(wrap.querySelector("script.table-data").textContent);
    var thead=wrap.querySelector("thead"),tbody=wrap.querySelector("tbody"),count=wrap.querySelector(".table-count"),search=wrap.querySelector(".table-search");
    var rows=spec.rows.slice(),view=rows,sortCol=spec.sort,desc=spec.desc;
    var tr=document.createElement("tr");
    spec.columns.forEach(function(c,i){var th=document.createElement("th");th.textContent=c;th.dataset.col=i;if(spec.numeric[i])th.className="num";th.title="click to sort";th.addEventListener("click",function(){if(sortCol===i){desc=!desc;}else{sortCol=i;desc=spec.numeric[i];}apply();});tr.appendChild(th);});
    thead.appendChild(tr);
    function cmp(a,b){var x=a[sortCol],y=b[sortCol];if(x===y)return 0;if(x===null)return 1;if(y===null)return -1;var r=(typeof x==="number"&&typeof y==="number")?x-y:String(x).localeCompare(String(y));return desc?-r:r;}
    function apply(){
      var q=search.value.trim().toLowerCase();
      view=rows;
      if(q){var m=q.match(/^([\w.]+):(.*)$/),col=-1;if(m){col=spec.columns.map(function(c){return c.toLowerCase();}).indexOf(m[1]);}
        if(col>=0){var want=m[2].trim();view=rows.filter(function(r){return fmt(r[col]).toLowerCase()===want;});}
        else{view=rows.filter(function(r){return r.some(function(v){return fmt(v).toLowerCase().indexOf(q)>=0;});});}}
      if(sortCol!==null&&sortCol!==undefined){view=view.slice().sort(cmp);}
      thead.querySelectorAll("th").forEach(function(th){var i=+th.dataset.col;if(i===sortCol)th.setAttribute("aria-sort",desc?"descending":"ascending");else th.removeAttribute("aria-sort");});
      var html=[],n=Math.min(view.length,spec.pageSize);
      for(var k=0;k<n;k++){var r=view[k];html.push("<tr>"+r.map(function(v,i){var s=fmt(v).replace(/&/g,"&amp;").replace(/</g,"&lt;");return spec.numeric[i]?'<td class="num">'+s+"</td>":"<td>"+s+"</td>";}).join("")+"</tr>");}
      tbody.innerHTML=html.join("");
      count.textContent=(view.length>n?"first "+n+" of ":"")+view.length+(q?" matching":"")+" rows"+(rows.length!==view.length?" (of "+rows.length+")":"");
    }
    search.addEventListener("input",apply);
    apply();
  }
  document.querySelectorAll(".table-wrap").forEach(setup);
})();
"""


def page(title: str, subtitle: str, sections: Sequence[Section], plotly_js: str) -> str:
    """The whole self-contained document."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style><script>{plotly_js}</script></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main>"
        f"<script>{TABLE_JS}</script></body></html>\n"
    )
