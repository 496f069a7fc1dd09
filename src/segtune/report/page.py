"""Owns the report's HTML: one self-contained page (inline CSS and JS, images as data URIs, nothing
fetched when it is viewed) assembled from sections of already-drawn figures and tables.

Hand-written markup: a templating library would be one more dependency for one page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

#: Gallery pictures per page (the rest are kept as data in the page and drawn when their page is shown).
PAGE_SIZE = 24

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1f4e79;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #dde;padding:6px 24px;z-index:2;font-size:13px}
nav a{margin-right:14px;color:#1f4e79;text-decoration:none}
main{padding:8px 24px 40px}section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;margin:16px 0;
padding:12px 18px}h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555;max-width:470px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #dde;padding:3px 8px;text-align:right}
th{background:#f0f3f7}td:first-child,th:first-child{text-align:left}
.note{font-size:13px;color:#444}.hint{background:#fff7d6;border:1px solid #f0d77a;padding:6px 10px;border-radius:4px;
font-size:13px;display:inline-block}pre{background:#f4f4f4;padding:8px;font-size:12px;overflow:auto;max-height:420px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.item{background:#fafafa;border:1px solid #ddd;padding:4px;font-size:12px}
.item img{display:block;max-width:612px}.pager{margin:8px 0;font-size:13px}.pager button{margin-right:8px}
.crops{display:flex;flex-wrap:wrap;gap:8px}.crops figure{margin:0;font-size:11px;width:132px}
"""

_GALLERY_JS = """
(function(){
  var data = document.getElementById('gallery-data');
  var items = JSON.parse(data.textContent);
  var size = parseInt(data.getAttribute('data-page-size'), 10) || 24, page = 0, pages = Math.max(1, Math.ceil(items.length / size));
  var box = document.getElementById('gallery-items'), label = document.getElementById('gallery-page');
  function show(p){
    page = Math.min(Math.max(p, 0), pages - 1);
    box.textContent = '';
    items.slice(page * size, (page + 1) * size).forEach(function(it, k){
      var div = document.createElement('div'); div.className = 'item';
      var img = document.createElement('img'); img.src = it.picture; img.alt = it.name;
      var cap = document.createElement('div');
      cap.textContent = '#' + (page * size + k + 1) + ' ' + it.name + ': F1 ' + it.f1.toFixed(3) +
        ' (TP ' + it.tp + ', FP ' + it.fp + ', missed ' + it.fn + ')';
      div.appendChild(img); div.appendChild(cap); box.appendChild(div);
    });
    label.textContent = 'page ' + (page + 1) + ' of ' + pages + ' (' + items.length + ' images)';
    document.getElementById('gallery-prev').disabled = page === 0;
    document.getElementById('gallery-next').disabled = page >= pages - 1;
  }
  document.getElementById('gallery-prev').onclick = function(){ show(page - 1); };
  document.getElementById('gallery-next').onclick = function(){ show(page + 1); };
  show(0);
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure(uri: str | None, caption: str = "") -> str:
    """An embedded plot (nothing when there is none to show)."""
    if not uri:
        return ""
    return (f'<figure><img src="{uri}" alt="{esc(caption)}">'
            + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "") + "</figure>")


def grid(*figures: str) -> str:
    return '<div class="grid">' + "".join(f for f in figures if f) + "</div>"


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A table of plain values; floats shown with 3 decimals, -1 (COCO's "no ground truth") as a dash."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "&ndash;" if v == -1.0 else f"{v:.3f}"
        return esc(v)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def gallery(items: list[Any], note: str, *, page_size: int | None = None) -> str:
    """The paged gallery: its items as JSON in the page, drawn a page at a time by the inline script."""
    data = json.dumps([asdict(i) for i in items]).replace("</", "<\\/")
    size = page_size or PAGE_SIZE
    return (f'<p class="note">{esc(note)}</p>'
            '<div class="pager"><button id="gallery-prev" type="button">&larr; previous</button>'
            '<button id="gallery-next" type="button">next &rarr;</button><span id="gallery-page"></span></div>'
            '<div id="gallery-items" class="gallery"></div>'
            f'<script type="application/json" id="gallery-data" data-page-size="{size}">{data}</script>')


def crops(items: list[Any], empty: str) -> str:
    if not items:
        return f'<p class="note">{esc(empty)}</p>'
    return '<div class="crops">' + "".join(
        f'<figure><img src="{c.picture}" alt="{esc(c.name)}"><figcaption>{esc(c.name)}<br>{esc(c.caption)}'
        "</figcaption></figure>" for c in items) + "</div>"


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page: ``sections`` of ``(anchor, title, body HTML)``."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    script = f"<script>{_GALLERY_JS}</script>" if 'id="gallery-data"' in body else ""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><link rel=\"icon\" href=\"data:,\"><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main>{script}</body></html>\n")
