"""Clean unpacked Debian documentation packages into one .jsonl per package (issue 30, item 3).

Used by `benchmarks/big_corpus.sh`, which downloads the packages (`apt-get download`) and unpacks
them (`dpkg-deb -x`) into PKG_ROOT/NAME/; this turns each into documents for `superpose prepare`:

    python benchmarks/big_corpus.py PKG_ROOT TEXT_DIR
    python benchmarks/big_corpus.py --packages          (the Debian packages it reads, one line)

- one document per HTML page (or per .pod file for perl-doc); markup stripped with the standard
  library's HTMLParser: scripts, styles, navigation bars, side bars, headers and footers dropped;
  code blocks (<pre>) kept as they are, other whitespace collapsed;
- pages that are code or indexes rather than prose are left out by path (rendered source files,
  SIMD intrinsics, search and index pages, translations) and by content (more than half <pre>);
- English only: a page needs at least 150 words and 6% of them among 24 common English words, and
  at most 5% non-ASCII letters (drops the translated manuals some packages ship);
- repetition removed across the whole corpus, in the order of SOURCES: an exact repeat of a
  paragraph line of 40+ characters seen before (API docs repeat inherited descriptions
  thousands of times) is dropped, then an exact repeat of a whole page, then a page left under
  500 characters.

Writes TEXT_DIR/NN-PACKAGE.jsonl ({"text": ...} a line) and TEXT_DIR/../sources.tsv (package,
version, licence, MB of text, documents). Deterministic: the same packages give the same bytes.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import sys
from multiprocessing import Pool
from pathlib import Path

try:  # lxml parses ~10x faster than the standard library's HTMLParser; either gives the same kind of text
    from lxml import html as lxml_html
except ImportError:  # pragma: no cover
    lxml_html = None

# (Debian package, its documentation's licence (from the package's debian/copyright; all are in
# Debian main, so DFSG-free), folder inside the package, path regex to leave out).
SOURCES = [
    ("linux-doc-6.1", "GPL-2.0 (Linux kernel documentation)", "usr/share/doc/linux-doc-6.1/html",
     r"/(translations|_sources|_static|_downloads|_images)/|/(genindex|search|py-modindex)\.html$"),
    ("openjdk-17-doc", "GPL-2.0 with Classpath exception", "usr/share/doc/openjdk-17-jre-headless/api",
     r"/(class-use|package-use)/|/(index-all|allclasses-index|allpackages-index|overview-tree|package-tree|"
     r"deprecated-list|constant-values|serialized-form|help-doc|search|index|module-summary|system-properties)"
     r"\.html$|/index-files/"),
    ("rust-web-doc", "MIT OR Apache-2.0", "usr/share/doc/rust-web-doc/html",
     r"/(src|arch|core_arch|simd|intrinsics|print\.html)(/|$)|/(all|search|settings|help|print)\.html$|"
     r"/(std|core|alloc|proc_macro|test)/.*/(fn|constant|type|static)\.[^/]*\.html$"),
    ("racket-doc", "MIT OR Apache-2.0", "usr/share/doc/racket", r"/(search|index)\.html$|doc-index"),
    ("erlang-doc", "Apache-2.0", "usr/share/doc/erlang-doc", r"/(search|index)\.html$|/src/"),
    ("python-statsmodels-doc", "BSD-3-Clause", "usr/share/doc/python-statsmodels-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("apache2-doc", "Apache-2.0", "usr/share/doc/apache2-doc/manual/en", r"/(sitemap|index)\.html$"),
    ("fp-docs-3.2.2", "GPL-2.0-or-later (Free Pascal documentation)", "usr/share/doc/fp-docs/3.2.2",
     r"/(index-\d+|classes)\.html$"),
    ("dpdk-doc", "BSD-3-Clause", "usr/share/doc/dpdk",
     r"/(_modules|_sources|_static|_images|_downloads|api)/|/(genindex|search|py-modindex)\.html$"),
    ("twisted-doc", "MIT", "usr/share/doc/twisted-doc/html",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex|nameIndex|classIndex|"
     r"moduleIndex|undoccedSummary)\.html$"),
    ("python-astropy-doc", "BSD-3-Clause", "usr/share/doc/python-astropy-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("python-sklearn-doc", "BSD-3-Clause", "usr/share/doc/python-sklearn-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("python-scipy-doc", "BSD-3-Clause", "usr/share/doc/python-scipy-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("python-sqlalchemy-doc", "MIT", "usr/share/doc/python-sqlalchemy-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("python-django-doc", "BSD-3-Clause", "usr/share/doc/python-django-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("python-sympy-doc", "BSD-3-Clause", "usr/share/doc/python-sympy-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("postgresql-doc-15", "PostgreSQL", "usr/share/doc/postgresql-doc-15", r"/(bookindex|index)\.html$"),
    ("perl-doc", "GPL-1.0-or-later OR Artistic-1.0-Perl", "usr/share/perl", r"perltoc\.pod$|perlmodlib|perlfaq"),
    ("llvm-19-doc", "Apache-2.0 WITH LLVM-exception", "usr/share/doc/llvm-19-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("ghc-doc", "BSD-3-Clause", "usr/share/doc/ghc-doc/html",
     r"/src/|/(doc-index[^/]*|index|index-frames|mini_[^/]*|search|genindex)\.html$"),
    ("sqlite3-doc", "public domain", "usr/share/doc/sqlite3", r"/(sitemap|keyword_index|toc|index)\.html$"),
    ("libreoffice-help-en-us", "MPL-2.0", "usr/share/libreoffice/help/en-US", r"/(index|search)\.html$"),
    ("nodejs-doc", "MIT", "usr/share/doc/nodejs", r"/(all|index)\.html$"),
    ("cmake-doc", "BSD-3-Clause", "usr/share/doc/cmake-data/html",
     r"/(_sources|_static|_images)/|/(genindex|search|index)\.html$"),
    ("git-doc", "GPL-2.0", "usr/share/doc/git-doc", r"RelNotes|/(index)\.html$"),
    ("maxima-doc", "GPL-2.0", "usr/share/doc/maxima-doc", r"_toc\.html$|Index\.html$"),
    ("octave-doc", "GPL-3.0-or-later", "usr/share/doc/octave", r"Index\.html$"),
    ("debian-policy", "GPL-2.0-or-later", "usr/share/doc/debian-policy",
     r"/(_sources|_static)/|/(genindex|search)\.html$"),
    ("sphinx-doc", "BSD-2-Clause", "usr/share/doc/sphinx-doc",
     r"/(_modules|_sources|_static|_images|_downloads)/|/(genindex|search|py-modindex)\.html$"),
    ("python-dask-doc", "BSD-3-Clause", "usr/share/doc/python-dask-doc/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("python-skimage-doc", "BSD-3-Clause", "usr/share/doc/python-skimage-doc/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("numba-doc", "BSD-2-Clause", "usr/share/doc/numba-doc/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("pylint-doc", "GPL-2.0-or-later", "usr/share/doc/pylint/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("cinder-doc", "Apache-2.0", "usr/share/doc/cinder-doc/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("keystone-doc", "Apache-2.0", "usr/share/doc/keystone-doc/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("octavia-doc", "Apache-2.0", "usr/share/doc/octavia-doc/html", r"/(_modules|_sources|_static|_images|_downloads|api|modules)/|/(genindex|search|py-modindex)\.html$"),
    ("ffmpeg-doc", "LGPL-2.1-or-later", "usr/share/doc/ffmpeg/manual", ""),
    ("ant-doc", "Apache-2.0", "usr/share/doc/ant/manual", r"/(index|toc|tasklist|typelist)\.html$"),
    ("grass-doc", "GPL-2.0-or-later", "usr/share/doc/grass-doc/html", r"/(index|full_index|keywords|topics)\.html$"),
    ("crystal-doc", "Apache-2.0", "usr/share/doc/crystal/api-docs", r"/(index|search)\.html$"),
    ("debian-handbook", "GPL-2.0-or-later OR CC-BY-SA-3.0", "usr/share/doc/debian-handbook/html/en-US",
     r"/(index|ix01)\.html$"),
    ("lilypond-doc-html", "GFDL-1.3-or-later (no invariant sections)", "usr/share/doc/lilypond/html/Documentation",
     r"/(internals|snippets|pictures|css|misc|[0-9a-f]{2})/|big-page|/index\.html$"),
]

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
SKIP_TAGS = {"script", "style", "nav", "header", "footer", "head", "noscript", "svg", "button", "form", "select",
             "textarea", "title", "math"}
SKIP_CLASSES = {"sphinxsidebar", "related", "headerlink", "footer", "navigation", "nav", "sidebar", "breadcrumb",
                "breadcrumbs", "search", "copyright", "rustdoc-breadcrumbs", "out-of-band", "src", "anchor", "sub-nav",
                "top-nav", "bottom-nav", "skip-nav", "linenos", "wy-nav-side", "rst-footer-buttons",
                "wy-side-nav-search", "wy-nav-top", "navheader", "navfooter", "tocnav", "navbar", "bd-sidebar",
                "bd-toc", "prev-next-area", "toc-drawer", "tocset", "sidebar-primary-items", "header-article",
                "navigation-top", "navigation-bottom", "flat-toc", "headerlink-anchor", "permalink", "langchoice",
                "toplang", "menu", "tocwrapper", "mini-toc", "breadcrumbs-bar", "navsettop", "navsetbottom",
                "subnav", "header-title"}
BLOCK = {"p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "table", "dt", "dd", "dl",
         "section", "blockquote", "article", "main", "td", "th", "caption", "figure", "figcaption", "details",
         "summary"}
PRE_ON, PRE_OFF, BREAK = "\ue000", "\ue001", "\ue002"  # private-use characters: <pre> text, line breaks


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.stack: list[tuple[str, bool]] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in VOID:
            if tag in ("br", "hr") and not self.skip:
                self.out.append("\n")
            return
        a = dict(attrs)
        skip = (tag in SKIP_TAGS or bool(SKIP_CLASSES.intersection((a.get("class") or "").split()))
                or a.get("role") in ("navigation", "search", "banner", "contentinfo") or a.get("aria-hidden") == "true"
                or a.get("id") in ("sidebar", "navigation", "header", "footer", "toc", "search"))
        self.stack.append((tag, skip))
        self.skip += skip
        if tag == "pre":
            self.pre += 1
            if not self.skip:
                self.out.append("\n" + PRE_ON)
        elif tag in BLOCK and not self.skip:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for t, skip in self.stack[i:]:
                    if t == "pre":
                        self.pre -= 1
                        if not self.skip:
                            self.out.append(PRE_OFF + "\n")
                    self.skip -= skip
                del self.stack[i:]
                break
        if tag in BLOCK and tag != "pre" and not self.skip:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def _lxml_text(data: bytes) -> str:
    """The same walk as _Text, through lxml (C, ~10x faster): skipped subtrees removed, block
    elements put on their own lines, <pre> wrapped in PRE_ON/PRE_OFF."""
    root = lxml_html.fromstring(data)
    for el in list(root.iter()):
        if not isinstance(el.tag, str):  # comments, processing instructions
            if el.getparent() is not None:
                el.drop_tree()
            continue
        a = el.attrib
        if (el.tag in SKIP_TAGS or SKIP_CLASSES.intersection((a.get("class") or "").split())
                or a.get("role") in ("navigation", "search", "banner", "contentinfo") or a.get("aria-hidden") == "true"
                or a.get("id") in ("sidebar", "navigation", "header", "footer", "toc", "search")):
            if el.getparent() is not None:
                el.drop_tree()
    for el in root.iter():
        if el.tag == "pre":
            el.text = "\n" + PRE_ON + (el.text or "")
            el.tail = PRE_OFF + "\n" + (el.tail or "")
        elif el.tag in BLOCK or el.tag in ("br", "hr"):
            el.text = BREAK + (el.text or "")
            el.tail = BREAK + (el.tail or "")
    return root.text_content()


def html_text(src: str | bytes) -> tuple[str, int]:
    """(plain text, characters inside <pre>)."""
    if lxml_html is not None:
        raw = _lxml_text(src if isinstance(src, bytes) else src.encode())
        pieces = re.split(f"[{PRE_ON}{PRE_OFF}]", raw)
        raw = "".join(PRE_ON + p + PRE_OFF if k % 2 else re.sub(r"\s+", " ", p).replace(BREAK, "\n")
                      for k, p in enumerate(pieces))
        return _assemble(raw)
    p = _Text()
    p.feed(src if isinstance(src, str) else src.decode("utf-8", "replace"))
    p.close()
    return _assemble("".join(p.out))


def _assemble(raw: str) -> tuple[str, int]:
    parts, pre_chars = [], 0
    for k, piece in enumerate(re.split(f"[{PRE_ON}{PRE_OFF}]", raw)):
        if k % 2:  # inside <pre>: kept as it is
            piece = piece.strip("\n").rstrip()
            pre_chars += len(piece)
            parts.append(piece)
        else:
            parts.append("\n".join(line.strip() for line in piece.split("\n")))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts)).strip(), pre_chars


_POD_CODES = re.compile(r"[A-Z]<<+\s(.*?)\s>>+|[A-Z]<([^<>]*)>")


def pod_text(src: str) -> tuple[str, int]:
    out, pre_chars, in_pod = [], 0, True
    for block in re.split(r"\n\s*\n", src):
        if block.startswith("=cut"):
            in_pod = False
        if block.startswith("=pod") or block.startswith("=head") or block.startswith("=item"):
            in_pod = True
        if not in_pod:
            continue
        if block.startswith("="):
            cmd, _, rest = block.partition(" ")
            if cmd.startswith(("=head", "=item")):
                block = rest
            else:
                continue
        elif block[:1] in (" ", "\t"):  # verbatim (code)
            pre_chars += len(block)
            out.append(block.rstrip())
            continue
        for _ in range(3):  # nested formatting codes, innermost first
            block = _POD_CODES.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), block)
        block = re.sub(r"\s+", " ", block.replace("E<gt>", ">").replace("E<lt>", "<")).strip()
        if block:
            out.append(block)
    return "\n\n".join(out), pre_chars


STOP = {"the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "with", "be", "on", "this", "are",
        "by", "or", "an", "not", "from", "can", "if", "which"}


def extract(path: str) -> str | None:
    """The cleaned page, or None when it is not an English prose page."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".pod"):
        text, pre_chars = pod_text(data.decode("utf-8", "replace"))
    else:
        try:
            text, pre_chars = html_text(data)
        except Exception:  # an empty or broken page
            return None
    if len(text) < 500 or pre_chars > 0.5 * len(text):
        return None
    words = re.findall(r"[a-z]+", text.lower())
    if len(words) < 150 or sum(w in STOP for w in words) < 0.06 * len(words):
        return None
    letters = sum(c.isalpha() for c in text)
    if sum(c.isalpha() and not c.isascii() for c in text) > 0.05 * max(1, letters):
        return None
    return text


def package_files(root: Path, sub: str, exclude: str) -> list[str]:
    base = root / sub
    pat = re.compile(exclude) if exclude else None
    files = []
    for d, dirs, fs in os.walk(base):
        dirs.sort()
        for f in sorted(fs):
            if not f.endswith((".html", ".htm", ".pod")):
                continue
            p = os.path.join(d, f)
            if pat and pat.search("/" + os.path.relpath(p, base)):
                continue
            files.append(p)
    return files


def version(root: Path, pkg: str) -> str:
    v = (root / pkg / "VERSION")
    return v.read_text().strip() if v.exists() else "?"


def main() -> None:
    if sys.argv[1:] == ["--packages"]:
        print(" ".join(pkg for pkg, *_ in SOURCES))
        return
    root, text_dir = Path(sys.argv[1]), Path(sys.argv[2])
    text_dir.mkdir(parents=True, exist_ok=True)
    seen_lines: set[bytes] = set()
    seen_docs: set[bytes] = set()
    rows = []
    with Pool(int(os.environ.get("BIG_CORPUS_JOBS", os.cpu_count() or 1))) as pool:
        for k, (pkg, lic, sub, exclude) in enumerate(SOURCES):
            if not (root / pkg).is_dir():
                print(f"big_corpus: {pkg} missing under {root}, skipped", file=sys.stderr)
                continue
            files = package_files(root / pkg, sub, exclude)
            n_docs = n_chars = 0
            with open(text_dir / f"{k:02d}-{pkg}.jsonl", "w", encoding="utf-8") as out:
                for text in pool.imap(extract, files, chunksize=16):
                    if text is None:
                        continue
                    kept = []
                    for line in text.split("\n"):
                        if len(line) >= 40:
                            h = hashlib.blake2b(line.encode(), digest_size=12).digest()
                            if h in seen_lines:
                                continue
                            seen_lines.add(h)
                        kept.append(line)
                    doc = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
                    h = hashlib.blake2b(doc.encode(), digest_size=16).digest()
                    if len(doc) < 500 or h in seen_docs:
                        continue
                    seen_docs.add(h)
                    out.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
                    n_docs += 1
                    n_chars += len(doc.encode())
            rows.append((pkg, version(root, pkg), lic, n_chars / 1e6, n_docs))
            print(f"big_corpus: {pkg:24s} {n_chars / 1e6:7.1f} MB {n_docs:6d} documents (of {len(files)} pages)",
                  file=sys.stderr, flush=True)
    with open(text_dir.parent / "sources.tsv", "w") as f:
        f.write("package\tversion\tlicence\tMB\tdocuments\n")
        for pkg, ver, lic, mb, n in rows:
            f.write(f"{pkg}\t{ver}\t{lic}\t{mb:.1f}\t{n}\n")
        f.write(f"total\t\t\t{sum(r[3] for r in rows):.1f}\t{sum(r[4] for r in rows)}\n")
    print(f"big_corpus: total {sum(r[3] for r in rows):.1f} MB, {sum(r[4] for r in rows)} documents", file=sys.stderr)


if __name__ == "__main__":
    main()
