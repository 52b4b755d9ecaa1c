#!/usr/bin/env bash
# A big corpus for TST measurements where data does not repeat (issue 30, item 3): English
# documentation from 42 Debian `main` packages (so every one DFSG-free), fetched with
# `apt-get download`, unpacked with `dpkg-deb -x`, cleaned by benchmarks/big_corpus.py into one
# document per page (HTML markup, navigation, code-only and index pages, translations and
# repeated paragraphs removed) and prepared with superpose's own 4096-token BPE. Nothing committed.
# None of its text is in the default corpus (Wikipedia summaries + GCIDE) or the second corpus
# (python3.11-doc).
#
# Built for bookworm on 2026-12-04: 202.0 MB of text, 27,111 documents, 66,995,111 train and
# 609,898 validation tokens (4096-token BPE, 2.99 bytes a token), 65 min on 2 loaded cores.
# Each package's version, licence (from its debian/copyright), MB of text and documents are in
# DATA_DIR/sources.tsv; that build's copy, with its meta.json, is in
# benchmarks/records/big_corpus_2026-12-04/. The licences: GPL-2.0 (some with the Classpath
# exception or -or-later), GPL-3.0-or-later, GPL-1.0-or-later OR Artistic-1.0-Perl, LGPL-2.1-or-later,
# MIT, MIT OR Apache-2.0, Apache-2.0 (one WITH LLVM-exception), BSD-2/3-Clause, PostgreSQL,
# MPL-2.0, GFDL-1.3-or-later without invariant sections, CC-BY-SA-3.0 (dual), public domain.
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
