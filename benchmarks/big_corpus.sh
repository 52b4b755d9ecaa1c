#!/usr/bin/env bash
# A big corpus for TST measurements where data does not repeat (issue 30, item 3): English
# documentation from 31 Debian `main` packages (so every one DFSG-free), fetched with
# `apt-get download`, unpacked with `dpkg-deb -x`, cleaned by benchmarks/big_corpus.py into one
# document per page (HTML markup, navigation, code-only and index pages, translations and
# repeated paragraphs removed) and prepared with superpose's own 4096-token BPE. Nothing committed.
# None of its text is in the default corpus (Wikipedia summaries + GCIDE) or the second corpus
# (python3.11-doc). Built for bookworm, Dec 2026: ~? MB of text, ? documents, ~?M train tokens.
#
# Sources (package: licence of its documentation, from its debian/copyright); sizes per source
# in benchmarks/big_corpus.md and DATA_DIR/sources.tsv:
#   linux-doc-6.1: GPL-2.0 · openjdk-17-doc: GPL-2.0 with Classpath exception ·
#   rust-web-doc: MIT OR Apache-2.0 · racket-doc: MIT OR Apache-2.0 · erlang-doc: Apache-2.0 ·
#   python-statsmodels-doc, python-astropy-doc, python-sklearn-doc, python-scipy-doc,
#   python-pandas-doc, python-django-doc, python-sympy-doc, ghc-doc, cmake-doc, dpdk-doc:
#   BSD-3-Clause · apache2-doc: Apache-2.0 · fp-docs-3.2.2: GPL-2.0-or-later · twisted-doc,
#   python-sqlalchemy-doc, nodejs-doc: MIT · postgresql-doc-15: PostgreSQL · perl-doc:
#   GPL-1.0-or-later OR Artistic-1.0-Perl · llvm-19-doc: Apache-2.0 WITH LLVM-exception ·
#   sqlite3-doc: public domain · lilypond-doc-html: GFDL-1.3-or-later (no invariant sections) ·
#   libreoffice-help-en-us: MPL-2.0 · git-doc, maxima-doc: GPL-2.0 · octave-doc:
#   GPL-3.0-or-later · debian-policy: GPL-2.0-or-later · sphinx-doc: BSD-2-Clause
#
#   bash benchmarks/big_corpus.sh DATA_DIR [VOCAB_SIZE]     (default vocabulary 4096)
#
# Needs Debian's apt-get (after 'apt-get update') and dpkg-deb, ~0.5 GB of downloads and ~4 GB
# of temporary space (TMPDIR). Then, e.g.: superpose compare --preset cpu-long --data.path DATA_DIR ...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/big_corpus.sh DATA_DIR [VOCAB_SIZE]}
vocab=${2:-4096}
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { echo "big_corpus: needs Debian's apt-get and dpkg-deb" >&2; exit 2; }
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
read -r -a pkgs <<<"$($py benchmarks/big_corpus.py --packages)"
mkdir -p "$work/debs" "$work/pkg"
# `apt-get download` fetches the .debs into the current folder without installing them.
(cd "$work/debs" && apt-get download "${pkgs[@]}" >/dev/null 2>&1) \
  || { echo "big_corpus: apt-get download failed; run 'apt-get update' first (needs bookworm's main)" >&2; exit 2; }
for deb in "$work"/debs/*.deb; do
  name=$(dpkg-deb -f "$deb" Package)
  dpkg-deb -x "$deb" "$work/pkg/$name"
  dpkg-deb -f "$deb" Version >"$work/pkg/$name/VERSION"
  rm "$deb"
done
echo "big_corpus: ${#pkgs[@]} packages fetched and unpacked in $((SECONDS - start)) s" >&2
$py benchmarks/big_corpus.py "$work/pkg" "$work/text"
rm -rf "$work/pkg"
# 1% held out per source (whole pages): over a million validation tokens, well above the 256k
# that issue 30 asks the comparisons to use.
.venv/bin/superpose prepare --text "$work/text" --out "$out" --vocab-size "$vocab" --val-fraction 0.01
cp "$work/sources.tsv" "$out/sources.tsv"
echo "big_corpus: done in $((SECONDS - start)) s; sources in $out/sources.tsv" >&2
