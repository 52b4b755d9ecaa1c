#!/usr/bin/env bash
# A second corpus for TST measurements (issue 21): the Python 3.11 documentation's
# reStructuredText sources, from Debian's python3.11-doc package (PSF License; nothing committed).
# 497 pages, one document each (~12 MB of text, ~7k tokens a page on average): long documents,
# unlike the default corpus's dictionary entries (84 tokens on average).
#
#   bash benchmarks/second_corpus.sh DATA_DIR [VOCAB_SIZE]     (default vocabulary 4096)
#
# Then, e.g.: superpose compare --preset cpu-long --data.path DATA_DIR ...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/second_corpus.sh DATA_DIR [VOCAB_SIZE]}
vocab=${2:-4096}
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { echo "second_corpus: needs Debian's apt-get and dpkg-deb" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# `apt-get download` fetches the .deb into the current folder without installing it.
(cd "$work" && apt-get download python3.11-doc >/dev/null 2>&1) \
  || { echo "second_corpus: apt-get download python3.11-doc failed; run 'apt-get update' first" >&2; exit 2; }
dpkg-deb -x "$work"/python3.11-doc_*_all.deb "$work/pkg"
sources="$work/pkg/usr/share/doc/python3.11/html/_sources"
echo "second_corpus: $(find "$sources" -name '*.rst.txt' | wc -l) pages, $(du -sh "$sources" | cut -f1)" >&2
.venv/bin/superpose prepare --text "$sources" --out "$out" --vocab-size "$vocab"
