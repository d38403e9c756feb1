// A small, safe Markdown renderer for model answers: renderMarkdown(text) -> HTML string.
//
// Safety first: the whole text is HTML-escaped before any markup is added, so nothing the model
// writes can become a tag or an attribute; links are made only for http(s) URLs. It covers what
// chat models write: fenced code (an unclosed fence, as while streaming, runs to the end), inline
// code, headings, bold / italic / strike, links, bullet and numbered lists, block quotes, tables,
// rules and paragraphs. It is not CommonMark: no nested lists, no HTML blocks, no reference links.
"use strict";

(function (global) {
  const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  // Inline markup over one escaped line. Code spans are set aside first so nothing inside them changes.
  function inline(s) {
    const spans = [];
    s = s.replace(/`([^`]+)`/g, (_, code) => {
      spans.push(code);
      return "\u0000" + (spans.length - 1) + "\u0000";
    });
    s = s.replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g,
      (_, text, url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${text}</a>`);
    s = s.replace(/\*\*(?=\S)([^*]*?\S)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/__(?=\S)([^_]*?\S)__/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*]*?[^\s*])?\*(?![*\w])/g,
      (m, before, body) => (body === undefined ? m : `${before}<em>${body}</em>`));
    s = s.replace(/(^|[^_\w])_(?=[^\s_])([^_]*?[^\s_])_(?![_\w])/g, "$1<em>$2</em>");
    s = s.replace(/~~(?=\S)([^~]*?\S)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${spans[Number(i)]}</code>`);
  }

  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)(\s+#+)?\s*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^\s{0,3}&gt;\s?/;
  const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_RULE = /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$/;

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => inline(c.trim()));
  }

  // Block markup over escaped lines.
  function blocks(lines) {
    const out = [];
    let para = [];
    const flush = () => {
      if (para.length) out.push("<p>" + para.map(inline).join("<br>") + "</p>");
      para = [];
    };
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = line.match(FENCE))) {
        flush();
        const fence = m[1];
        const lang = m[2];
        const body = [];
        i++;
        while (i < lines.length && !(lines[i].trim().startsWith(fence) && /^[`~]+$/.test(lines[i].trim()))) {
          body.push(lines[i++]);
        }
        i++;  // the closing fence (or past the end)
        const attrs = lang ? ` class="language-${lang}" data-lang="${lang}"` : "";
        out.push(`<pre><code${attrs}>${body.join("\n")}</code></pre>`);
      } else if ((m = line.match(HEADING))) {
        flush();
        const n = m[1].length;
        out.push(`<h${n}>${inline(m[2])}</h${n}>`);
        i++;
      } else if (RULE.test(line)) {
        flush();
        out.push("<hr>");
        i++;
      } else if (QUOTE.test(line)) {
        flush();
        const body = [];
        while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
        out.push("<blockquote>" + blocks(body) + "</blockquote>");
      } else if ((m = line.match(ITEM))) {
        flush();
        const ordered = /\d/.test(m[1]);
        const start = ordered ? parseInt(m[1], 10) : 1;
        const items = [];
        while (i < lines.length && (m = lines[i].match(ITEM)) && /\d/.test(m[1]) === ordered) {
          items.push(inline(m[2]));
          i++;
          while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !ITEM.test(lines[i])) {
            items[items.length - 1] += "<br>" + inline(lines[i++].trim());
          }
        }
        const tag = ordered ? "ol" : "ul";
        const startAttr = ordered && start !== 1 ? ` start="${start}"` : "";
        out.push(`<${tag}${startAttr}>` + items.map((x) => `<li>${x}</li>`).join("") + `</${tag}>`);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1])) {
        flush();
        const head = cells(line);
        i += 2;
        const rows = [];
        while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(cells(lines[i++]));
        out.push("<table><thead><tr>" + head.map((c) => `<th>${c}</th>`).join("") + "</tr></thead><tbody>" +
          rows.map((r) => "<tr>" + r.map((c) => `<td>${c}</td>`).join("") + "</tr>").join("") +
          "</tbody></table>");
      } else if (!line.trim()) {
        flush();
        i++;
      } else {
        para.push(line);
        i++;
      }
    }
    flush();
    return out.join("\n");
  }

  function renderMarkdown(text) {
    const clean = String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n");
    return blocks(escapeHtml(clean).split("\n"));
  }

  global.renderMarkdown = renderMarkdown;
  global.escapeHtml = escapeHtml;
})(window);
